from steerchat.engine.core.api import SamplingSettings
from steerchat.tui.config import Config, load_config, merge_overrides, save_config


def test_missing_file_gives_defaults_without_warning(tmp_path):
    config, warning = load_config(tmp_path / "none.toml")
    assert config == Config() and warning is None


def test_round_trip(tmp_path):
    path = tmp_path / "config.toml"
    config = Config(model="smollm2-135m", level="Medium", system="Be brief.", theme="nord",
                    sampling=SamplingSettings(temperature=0.7, max_new_tokens=64))
    save_config(config, path)
    loaded, warning = load_config(path)
    assert warning is None
    assert loaded == config


def test_syntax_error_names_the_line_and_falls_back(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('model = "smollm2-135m"\nlevel = \n')
    config, warning = load_config(path)
    assert config == Config()
    assert "line 2" in warning and str(path) in warning and "default" in warning


def test_bad_value_is_skipped_with_its_line(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('model = "smollm2-135m"\ntheme = 3\n[sampling]\ntemperature = "hot"\ncolour = 1\n')
    config, warning = load_config(path)
    assert config.model == "smollm2-135m" and config.theme == Config().theme
    assert "line 2" in warning and "'theme' must be a string" in warning
    assert "line 4" in warning and "'temperature' must be a number" in warning
    assert "unknown sampling setting 'colour'" in warning


def test_cli_overrides_win_but_none_keeps_config():
    config = Config(model="phi-3-mini", level="Low")
    merged = merge_overrides(config, model="smollm2-135m", level=None)
    assert merged.model == "smollm2-135m" and merged.level == "Low"


def test_syntax_error_keeps_the_other_keys(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('model = "phi-3-mini"\nlevel = \nsystem = "Be brief."\n')
    config, warning = load_config(path)
    assert config.model == "phi-3-mini" and config.system == "Be brief." and config.level is None
    assert "line 2" in warning and "the rest kept" in warning


def test_save_backs_up_an_unparsable_file_and_keeps_comments(tmp_path):
    path = tmp_path / "config.toml"
    original = '# mine\nmodel = "phi-3-mini"  # the big one\nlevel = \nextra = true\n'
    path.write_text(original)
    config, _ = load_config(path)
    save_config(config, path)
    backups = list(tmp_path.glob("config.toml.bak-*"))
    assert [b.read_text() for b in backups] == [original]
    text = path.read_text()
    assert "# mine" in text and "# the big one" in text and "extra = true" in text


def test_top_p_out_of_range_falls_back_alone(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[sampling]\ntop_p = 5.0\ntemperature = 0.3\n")
    config, warning = load_config(path)
    assert config.sampling.top_p == Config().sampling.top_p and config.sampling.temperature == 0.3
    assert "'top_p'" in warning and "line 2" in warning


def test_invalid_utf8_is_a_warning(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b'theme = "nord"\n# caf\xe9\n')
    config, warning = load_config(path)
    assert config.theme == "nord" and "UTF-8" in warning


def test_loop_guard_and_top_k_keys(tmp_path):
    path = tmp_path / "config.toml"
    assert Config().sampling.loop_guard is True and Config().sampling.top_k is None
    path.write_text("[sampling]\nloop_guard = false\ntop_k = 20\n")
    config, warning = load_config(path)
    assert warning is None and config.sampling.loop_guard is False and config.sampling.top_k == 20
    save_config(config, path)
    assert "loop_guard = false" in path.read_text()
    assert load_config(path)[0] == config


def test_loop_guard_and_top_k_are_validated(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[sampling]\nloop_guard = "no"\ntop_k = -1\nseed = 3\n')
    config, warning = load_config(path)
    assert config.sampling.loop_guard is True and config.sampling.top_k is None and config.sampling.seed == 3
    assert "line 2" in warning and "'loop_guard' must be true or false" in warning
    assert "line 3" in warning and "'top_k' must be a whole number >= 0" in warning
    path.write_text("[sampling]\nloop_guard = 1\n")
    assert "'loop_guard' must be true or false" in load_config(path)[1]


def test_unset_sampling_keys_stay_unset(tmp_path):
    # None means "the model's own": saving leaves them out, so a model's defaults still apply
    path = tmp_path / "config.toml"
    save_config(Config(), path)
    text = path.read_text()
    assert "temperature" not in text and "top_p" not in text and "top_k" not in text
    assert load_config(path)[0].sampling.temperature is None
