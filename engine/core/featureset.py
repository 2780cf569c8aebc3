"""`features.json`: which SAE features mean "refusal" (and "harm"), with their scales and labels.

Written by `steerchat features find-refusal` beside an SAE, read by the session. Pure
Python, no torch.

    {
      "sae": "...", "hook_layer": 12,
      "refusal_features": [{"feature": 17, "reference_activation": 5.1, "score": 2.3, "label": "..."}],
      "harm_gate": {"features": [3, 9], "weights": [1.0, 0.5], "threshold": 2.0, "method": "features",
                    "benign_threshold": 0.5},
      "labels": {"17": "refusal opening", ...},
      "command": "steerchat features find-refusal ..."
    }
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from steerchat.engine.core.api import EngineError

FEATURES_NAME = "features.json"
LABELS_NAME = "labels.json"


@dataclass
class RefusalFeature:
    feature: int
    reference_activation: float  # m_f: the clamp target at s = 1 (how it is found: engine.pipelines.refusal_features)
    score: float = 0.0
    label: str | None = None


@dataclass
class HarmGate:
    features: list[int]
    weights: list[float]
    threshold: float
    method: str = "features"
    skip_positions: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    # method "probe": a linear probe on the hook-layer residual h_t (no SAE features):
    # score = bias + mean over user tokens of probe_user·h_t + mean over the template tokens
    # after the user message of probe_template·h_t (engine.runtime.steering.FeatureGate)
    probe_user: list[float] = field(default_factory=list)
    probe_template: list[float] = field(default_factory=list)
    bias: float = 0.0
    # the lowering side (Open, two-sided levels) pushes refusal down only where the score is below
    # this, a second threshold that nearly every harmful dev prompt clears; between it and
    # `threshold` a prompt is left as the model has it. None: lower wherever the gate is closed
    benign_threshold: float | None = None


def _check_types(data: Any) -> None:
    """The containers of features.json have the types the reader expects (TypeError naming the field)."""
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, found {type(data).__name__}")
    for key, kind, name in (("refusal_features", list, "a list"), ("labels", dict, "an object"),
                            ("harm_gate", dict, "an object")):
        value = data.get(key)
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"{key!r} must be {name}, found {type(value).__name__}")
    for i, r in enumerate(data.get("refusal_features") or []):
        if not isinstance(r, dict):
            raise TypeError(f"refusal_features[{i}] must be an object, found {type(r).__name__}")
    hook_layer = data.get("hook_layer")
    if hook_layer is not None and (not isinstance(hook_layer, int) or isinstance(hook_layer, bool) or hook_layer < 0):
        raise TypeError(f"'hook_layer' must be a whole number of at least 0, found {hook_layer!r}")


def _check_values(refusal: list[RefusalFeature], gate: HarmGate | None) -> None:
    """Feature indices are not negative (a negative index would steer another feature) and
    the numbers steering uses are finite."""
    for i, r in enumerate(refusal):
        if r.feature < 0:
            raise ValueError(f"refusal_features[{i}]: feature {r.feature} is negative")
        if not math.isfinite(r.reference_activation):
            raise ValueError(f"refusal_features[{i}] (feature {r.feature}): reference_activation "
                             f"{r.reference_activation} is not a finite number")
    if gate is not None:
        if any(f < 0 for f in gate.features):
            raise ValueError(f"harm_gate: feature {min(gate.features)} is negative")
        if not all(math.isfinite(w) for w in gate.weights) or not math.isfinite(gate.threshold):
            raise ValueError("harm_gate: weights and threshold must be finite numbers")
        if not all(math.isfinite(w) for w in gate.probe_user + gate.probe_template) or not math.isfinite(gate.bias):
            raise ValueError("harm_gate: the probe's weights and bias must be finite numbers")
        if gate.benign_threshold is not None and not (math.isfinite(gate.benign_threshold)
                                                       and gate.benign_threshold <= gate.threshold):
            raise ValueError(f"harm_gate: benign_threshold {gate.benign_threshold} must be a finite number no "
                             f"higher than the threshold {gate.threshold}")
        if gate.method == "probe" and not gate.probe_user:
            raise ValueError("harm_gate: method 'probe' needs probe_user weights")
        if gate.probe_template and len(gate.probe_template) != len(gate.probe_user):
            raise ValueError("harm_gate: probe_user and probe_template differ in length")


@dataclass
class FeatureSet:
    refusal_features: list[RefusalFeature] = field(default_factory=list)
    harm_gate: HarmGate | None = None
    labels: dict[int, str] = field(default_factory=dict)
    hook_layer: int | None = None
    sae: str = ""
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def label(self, feature: int) -> str | None:
        return self.labels.get(feature)

    def to_json(self) -> str:
        d = asdict(self)
        d["labels"] = {str(k): v for k, v in sorted(self.labels.items())}
        extra = d.pop("extra")
        d.update(extra)
        return json.dumps(d, indent=2)

    def save(self, folder: Path) -> Path:
        """Write features.json (and labels.json) into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FEATURES_NAME).write_text(self.to_json())
        if self.labels:
            (folder / LABELS_NAME).write_text(
                json.dumps({str(k): v for k, v in sorted(self.labels.items())}, indent=1)
            )
        return folder / FEATURES_NAME

    @classmethod
    def load(cls, path: Path) -> "FeatureSet":
        """Read features.json (a file, or a folder holding one) and labels.json beside it."""
        path = Path(path)
        if path.is_dir():
            path = path / FEATURES_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            _check_types(data)
            refusal = [
                RefusalFeature(
                    feature=int(r["feature"]), reference_activation=float(r["reference_activation"]),
                    score=float(r.get("score", 0.0)), label=r.get("label"),
                )
                for r in data.get("refusal_features", [])
            ]
            gate = data.get("harm_gate")
            harm_gate = None
            if gate:
                if str(gate.get("method", "features")) != "probe":
                    gate["features"], gate["weights"]  # a feature gate must name both (KeyError otherwise)
                harm_gate = HarmGate(
                    features=[int(f) for f in gate.get("features", [])],
                    weights=[float(w) for w in gate.get("weights", [])],
                    threshold=float(gate["threshold"]), method=str(gate.get("method", "features")),
                    skip_positions=int(gate.get("skip_positions", 0)), metrics=dict(gate.get("metrics", {})),
                    probe_user=[float(w) for w in gate.get("probe_user", [])],
                    probe_template=[float(w) for w in gate.get("probe_template", [])],
                    bias=float(gate.get("bias", 0.0)),
                    benign_threshold=None if gate.get("benign_threshold") is None else float(gate["benign_threshold"]),
                )
                if len(harm_gate.features) != len(harm_gate.weights):
                    raise ValueError("harm_gate features and weights differ in length")
            labels = {int(k): str(v) for k, v in data.get("labels", {}).items()}
            _check_values(refusal, harm_gate)
        except KeyError as exc:
            raise EngineError(f"{path}: not a valid features file (missing {exc})") from None
        except OSError as exc:
            raise EngineError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        except (ValueError, TypeError) as exc:
            raise EngineError(f"{path}: not a valid features file ({exc})") from None
        labels_path = path.parent / LABELS_NAME
        if labels_path.is_file():
            try:
                labels.update({int(k): str(v) for k, v in json.loads(labels_path.read_text()).items()})
            except (OSError, ValueError, TypeError) as exc:
                raise EngineError(f"{labels_path}: not a valid labels file ({exc})") from None
        for r in refusal:
            r.label = r.label or labels.get(r.feature)
        known = {"refusal_features", "harm_gate", "labels", "hook_layer", "sae", "command"}
        return cls(
            refusal_features=refusal, harm_gate=harm_gate, labels=labels, hook_layer=data.get("hook_layer"),
            sae=str(data.get("sae", "")), command=str(data.get("command", "")),
            extra={k: v for k, v in data.items() if k not in known},
        )
