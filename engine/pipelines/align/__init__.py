"""Learning from mistakes (Chen et al., "Gaining Wisdom from Setbacks", arXiv 2310.10477):
the training half of the method, as a pipeline a user runs on their own chat model.

1. `induce`   — harmful replies induced with a red-team hint (judge: not refusals), plus
                mistakes from a JSONL file or flagged in the chat history;
2. `analyse`  — the model explains why each reply is harmful (guided analysis), checked;
3. `dataset`  — unguided analysis rows, guided answers and ordinary pairs, hints removed;
4. `finetune` — LoRA (QLoRA on a 4-bit CUDA base) with checkpoints and exact resume.

`pipeline` runs them over one resumable work folder; `steerchat align` is its CLI, and
`steerchat --adapter WORK/adapter` chats with the result. The inference half (guided
generation) lives in `engine.core.levels`.
"""
