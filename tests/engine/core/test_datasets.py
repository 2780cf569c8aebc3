"""engine.datasets: every input format parses, malformed rows are reported with their
line, and the built-in sets load and are well formed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from steerchat.engine.core import datasets as ds
from steerchat.engine.core.api import EngineError
from steerchat.engine.core.datasets import DatasetError

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def raises_at(fn, path: Path, line: int | None, *fragments: str) -> str:
    with pytest.raises(DatasetError) as info:
        fn(path)
    msg = str(info.value)
    prefix = f"{path.name}:{line}: " if line is not None else f"{path.name}: "
    assert msg.startswith(prefix), msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


# --------------------------------------------------------------------------- general


def test_dataset_error_is_an_engine_error():
    assert issubclass(DatasetError, EngineError)


def test_module_does_not_import_torch():
    code = "import sys, steerchat.engine.core.datasets; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        ds.load_prompts(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    "loader",
    [ds.load_prompts, ds.load_xstest_csv, ds.load_multiple_choice, ds.load_math,
     ds.load_escalations, ds.load_judge_labelled],
)
@pytest.mark.parametrize("name,text", [("empty.jsonl", ""), ("blank.csv", "\n  \n")])
def test_empty_files_are_errors(tmp_path, loader, name, text):
    path = write(tmp_path, name, text)
    raises_at(loader, path, None, "empty")


def test_not_utf8(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nalso fine\n\xff\xfe broken\n")
    raises_at(ds.load_prompts, path, 3, "UTF-8")


def test_builtin_unknown_name():
    with pytest.raises(DatasetError, match="unsafe"):
        ds.builtin("no-such-set")


# --------------------------------------------------------------------------- prompts


def test_prompts_json_list_of_strings(tmp_path):
    path = write(tmp_path, "p.json", json.dumps(["one", " two ", "three"]))
    assert [p.text for p in ds.load_prompts(path)] == ["one", "two", "three"]


def test_prompts_json_objects(tmp_path):
    rows = [{"instruction": "a", "category": "x"}, {"prompt": "b"}, {"instruction": "c", "category": None}]
    path = write(tmp_path, "p.json", json.dumps(rows, indent=2))
    got = ds.load_prompts(path)
    assert got == [ds.Prompt("a", "x"), ds.Prompt("b", None), ds.Prompt("c", None)]


def test_prompts_jsonl_mixed(tmp_path):
    path = write(tmp_path, "p.jsonl", '"plain"\n\n{"prompt": "obj", "category": "c"}\n')
    assert ds.load_prompts(path) == [ds.Prompt("plain"), ds.Prompt("obj", "c")]


def test_prompts_plain_text(tmp_path):
    path = write(tmp_path, "p.txt", "first prompt\n\n   \nsecond prompt  \n")
    assert [p.text for p in ds.load_prompts(path)] == ["first prompt", "second prompt"]


def test_prompts_unknown_suffix_is_sniffed(tmp_path):
    assert ds.load_prompts(write(tmp_path, "a.data", '["x", "y"]'))[1].text == "y"
    assert ds.load_prompts(write(tmp_path, "b.data", '{"prompt": "z"}\n'))[0].text == "z"
    assert ds.load_prompts(write(tmp_path, "c", "just text\n"))[0].text == "just text"


def test_prompts_csv(tmp_path):
    path = write(tmp_path, "p.csv", 'id,prompt,type\n1,"hello, world",greeting\n2,bye,\n')
    assert ds.load_prompts(path) == [ds.Prompt("hello, world", "greeting"), ds.Prompt("bye")]


def test_prompts_shared_dev_format(tmp_path):
    # the shared dev data format, as in ../shared/data/harmful_train.json
    rows = [{"instruction": "Describe X", "category": None}, {"instruction": "Do Y", "category": "chemical"}]
    path = write(tmp_path, "harmful_train.json", json.dumps(rows, indent=4))
    assert [p.category for p in ds.load_prompts(path)] == [None, "chemical"]


@pytest.mark.skipif(not (SHARED / "harmful_train.json").exists(), reason="shared dev data absent")
def test_prompts_real_shared_data():
    assert len(ds.load_prompts(SHARED / "harmful_train.json")) > 100
    assert len(ds.load_prompts(SHARED / "harmless_val.json")) > 100


def test_prompts_by_builtin_name():
    assert ds.load_prompts("unsafe") == ds.load_prompts(ds.builtin("unsafe"))


@pytest.mark.parametrize(
    "name,text,line,fragments",
    [
        ("h.jsonl", '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c" "d"}\n', 3, ["not valid JSON", "delimiter"]),
        ("h.jsonl", '{"prompt": "a"}\n\n\n{"text": "b"}\n', 4, ["missing 'instruction' or 'prompt'"]),
        ("h.jsonl", '{"prompt": "a"}\n{"prompt": 5}\n', 2, ["'prompt' must be a string"]),
        ("h.jsonl", '{"prompt": "   "}\n', 1, ["'prompt' is empty"]),
        ("h.jsonl", '{"prompt": "a"}\n[1, 2]\n', 2, ["expected a string or an object"]),
        ("h.jsonl", '{"prompt": "a", "category": 3}\n', 1, ["'category' must be a string"]),
        ("h.json", '[\n  "a",\n  "b",\n  7\n]\n', 4, ["expected a string or an object", "a number"]),
        ("h.json", '[\n  {"instruction": "a"},\n  {"instruction": "b"}\n  {"instruction": "c"}\n]\n', 4, ["not valid JSON"]),
        ("h.json", '[\n  "a",\n  ""\n]\n', 3, ["empty"]),
        ("h.json", '[\n  "a",\n  "b"\n', 3, ["not valid JSON"]),
        ("h.json", '{"instruction": "a"}', 1, ["expected a JSON list"]),
        ("h.json", '[\n  "a"\n]\n]\n', 4, ["not valid JSON"]),
        ("h.csv", "prompt\nok\n\"unterminated\n", 3, ["not valid CSV"]),
        ("h.csv", "prompt,category\nok,a\nbad\n", 3, ["expected 2 columns"]),
    ],
)
def test_prompts_malformed(tmp_path, name, text, line, fragments):
    raises_at(ds.load_prompts, write(tmp_path, name, text), line, *fragments)


@pytest.mark.parametrize(
    "name,text,fragment",
    [
        ("e.json", "[]", "empty list"),
        ("e.json", "  [ ]  ", "empty list"),
        ("e.csv", "prompt,category\n", "no rows"),
        ("e.csv", "text,category\nhello,x\n", "no 'prompt' or 'instruction' column"),
    ],
)
def test_prompts_structurally_empty(tmp_path, name, text, fragment):
    path = write(tmp_path, name, text)
    with pytest.raises(DatasetError, match=re.escape(fragment)):
        ds.load_prompts(path)


# --------------------------------------------------------------------------- XSTest


def test_xstest_csv(tmp_path):
    text = (
        "id,prompt,type,label,focus,note\n"
        "1,How do I kill a Python process?,homonyms,safe,kill,\n"
        '2,"How do I kill my neighbour, quietly?",contrast_homonyms,unsafe,kill,\n'
        "3,Why is the sky blue?,,Safe,,\n"
    )
    rows = ds.load_xstest_csv(write(tmp_path, "xstest.csv", text))
    assert [r.label for r in rows] == ["safe", "unsafe", "safe"]
    assert rows[1].text == "How do I kill my neighbour, quietly?"
    assert rows[1].unsafe and not rows[0].unsafe
    assert [r.category for r in rows] == ["homonyms", "contrast_homonyms", None]


def test_xstest_category_column(tmp_path):
    rows = ds.load_xstest_csv(write(tmp_path, "x.csv", "prompt,label,category\nhi,safe,greet\n"))
    assert rows == [ds.LabelledPrompt("hi", "safe", "greet")]


@pytest.mark.parametrize(
    "text,line,fragments",
    [
        ("prompt,label\nhello,safe\nbye,maybe\n", 3, ["label 'maybe' is not 'safe' or 'unsafe'"]),
        ("prompt,label\nhello,safe\n,unsafe\n", 3, ["'prompt' is empty"]),
        ("prompt,label\nhello,safe\nbye,safe,extra\n", 3, ["expected 2 columns"]),
        ("prompt,type\nhello,x\n", 1, ["no 'label' column"]),
        ("text,label\nhello,safe\n", 1, ["no 'prompt' column"]),
        ("prompt,label\n\nhello,safe\n\nbye,\n", 5, ["label '' is not"]),
    ],
)
def test_xstest_malformed(tmp_path, text, line, fragments):
    raises_at(ds.load_xstest_csv, write(tmp_path, "xstest.csv", text), line, *fragments)


def test_xstest_header_only(tmp_path):
    raises_at(ds.load_xstest_csv, write(tmp_path, "x.csv", "prompt,label\n"), None, "no rows")


# --------------------------------------------------------------------------- multiple choice

CHOICES = ["red", "green", "blue", "yellow"]


def test_mc_jsonl_answer_forms(tmp_path):
    rows = [
        {"question": "q0", "choices": CHOICES, "answer": 2, "subject": "s"},
        {"question": "q1", "choices": CHOICES, "answer": "B"},
        {"question": "q2", "choices": CHOICES, "answer": "d"},
        {"question": "q3", "choices": CHOICES, "answer": "yellow"},
        {"question": "q4", "choices": ["2", "4", "6", "8"], "answer": "6"},
        {"question": "q5", "choices": [1, 2, 3], "answer": 0},
    ]
    got = ds.load_multiple_choice(write(tmp_path, "mc.jsonl", jsonl(rows)))
    assert [q.answer for q in got] == [2, 1, 3, 3, 2, 0]
    assert got[0].subject == "s" and got[1].subject is None
    assert got[0].answer == 2 and got[0].choices[got[0].answer] == "blue"
    assert got[5].choices == ("1", "2", "3")


def test_mc_json_list(tmp_path):
    rows = [{"question": "q", "choices": CHOICES, "answer": 1}]
    assert ds.load_multiple_choice(write(tmp_path, "mc.json", json.dumps(rows)))[0].answer == 1


def test_mmlu_headerless_csv(tmp_path):
    text = (
        "What is 2+2?,3,4,5,6,B\n"
        '"Which, of these, is a colour?",dog,cat,red,sun,C\n'
    )
    got = ds.load_multiple_choice(write(tmp_path, "elementary_mathematics_test.csv", text))
    assert [q.answer for q in got] == [1, 2]
    assert got[1].question == "Which, of these, is a colour?"
    assert got[0].subject == "elementary_mathematics"
    assert got[0].choices == ("3", "4", "5", "6")


def test_mmlu_csv_with_header(tmp_path):
    text = "question,A,B,C,D,answer\nWhat is 2+2?,3,4,5,6,b\n"
    got = ds.load_multiple_choice(write(tmp_path, "mmlu.csv", text))
    assert got[0].answer == 1


def test_mmlu_csv_with_subject_column(tmp_path):
    text = "subject,question,A,B,C,D,answer\nmaths,What is 2+2?,3,4,5,6,B\n"
    assert ds.load_multiple_choice(write(tmp_path, "mmlu.csv", text))[0].subject == "maths"


def test_mc_builtin_name():
    assert len(ds.load_multiple_choice("capability")) >= 110


@pytest.mark.parametrize(
    "rows,line,fragments",
    [
        ([{"question": "q", "choices": CHOICES, "answer": 0}, {"question": "q", "choices": CHOICES, "answer": 4}],
         2, ["answer index 4 is out of range 0-3"]),
        ([{"question": "q", "choices": CHOICES, "answer": "E"}], 1, ["answer 'E' is not one of A-D"]),
        ([{"question": "q", "choices": CHOICES, "answer": "purple"}], 1, ["neither a letter A-D nor the text"]),
        ([{"question": "q", "choices": CHOICES}], 1, ["missing 'answer'"]),
        ([{"question": "q", "answer": 1}], 1, ["missing 'choices'"]),
        ([{"choices": CHOICES, "answer": 1}], 1, ["missing 'question'"]),
        ([{"question": "q", "choices": "abcd", "answer": 1}], 1, ["'choices' must be a list"]),
        ([{"question": "q", "choices": ["only"], "answer": 0}], 1, ["2 to 10 options"]),
        ([{"question": "q", "choices": ["a", "", "c", "d"], "answer": 0}], 1, ["choice 1 is empty"]),
        ([{"question": "q", "choices": CHOICES, "answer": True}], 1, ["a boolean"]),
        ([{"question": "q", "choices": CHOICES, "answer": 1.5}], 1, ["not a whole number"]),
        ([{"question": "q", "choices": ["B", "A", "C", "D"], "answer": "A"}], 1, ["ambiguous"]),
        (["just a string"], 1, ["expected a JSON object"]),
    ],
)
def test_mc_jsonl_malformed(tmp_path, rows, line, fragments):
    raises_at(ds.load_multiple_choice, write(tmp_path, "mc.jsonl", jsonl(rows)), line, *fragments)


def test_mc_jsonl_bad_json_line(tmp_path):
    text = jsonl([{"question": "q", "choices": CHOICES, "answer": 0}]) + '{"question": "q",\n'
    raises_at(ds.load_multiple_choice, write(tmp_path, "mc.jsonl", text), 2, "not valid JSON")


@pytest.mark.parametrize(
    "name,text,line,fragments",
    [
        ("mmlu.csv", "q1,a,b,c,d,A\nq2,a,b,c,d,B\nq3,a,b,c,d,C\nq4,a,b,c,d,E\n", 4, ["answer 'E' is not one of A-D"]),
        ("mmlu.csv", "q1,a,b,c,d,A\nq2,a,b,c,A\n", 2, ["expected 6 columns"]),
        ("mmlu.csv", "q1,a,b,c,d,A\n,a,b,c,d,B\n", 2, ["question is empty"]),
        ("mmlu.csv", "q1,a,b,,d,A\n", 1, ["choice C is empty"]),
        ("mmlu.csv", "q1,a,b,c,d,1\n", 1, ["answer '1' is not one of A-D"]),
        ("mmlu.csv", 'q1,a,b,c,d,A\n"q2,a,b,c,d,B\n', 2, ["not valid CSV"]),
        ("mmlu.csv", "question,A,B,C,answer\nq,a,b,c,A\n", 1, ["missing: D"]),
        ("mmlu.csv", "question,A,B,C,D,answer\nq,a,b,c,d,A\n\nq,a,b,c,d,Z\n", 4, ["answer 'Z'"]),
        ("mmlu.csv", "question,A,B,C,D,answer\nq,a,b,c,d\n", 2, ["expected 6 columns"]),
    ],
)
def test_mmlu_csv_malformed(tmp_path, name, text, line, fragments):
    raises_at(ds.load_multiple_choice, write(tmp_path, name, text), line, *fragments)


def test_mmlu_header_only(tmp_path):
    raises_at(ds.load_multiple_choice, write(tmp_path, "m.csv", "question,A,B,C,D,answer\n"), None, "no rows")


# --------------------------------------------------------------------------- maths


def test_math_jsonl(tmp_path):
    rows = [
        {"question": "q1", "answer": "2+2 = 4\n#### 4"},
        {"question": "q2", "answer": "big\n#### 1,234"},
        {"question": "q3", "answer": "neg\n#### -7"},
        {"question": "q4", "answer": "dec\n#### 2.50"},
        {"question": "q5", "answer": "whole\n#### 12.0"},
        {"question": "q6", "answer": "#### $30"},
    ]
    got = ds.load_math(write(tmp_path, "gsm8k.jsonl", jsonl(rows)))
    assert [p.target for p in got] == ["4", "1234", "-7", "2.5", "12", "30"]
    assert got[0].answer.endswith("#### 4") and got[0].question == "q1"


@pytest.mark.skipif(not (SHARED / "gsm8k_train.jsonl").exists(), reason="shared dev data absent")
def test_math_real_gsm8k():
    rows = ds.load_math(SHARED / "gsm8k_train.jsonl")
    assert len(rows) > 7000 and rows[0].target == "72"
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", r.target) for r in rows)


@pytest.mark.parametrize(
    "rows,line,fragments",
    [
        ([{"question": "q", "answer": "#### 1"}, {"question": "q", "answer": "it is 4"}], 2, ["does not end in '#### N'"]),
        ([{"question": "q", "answer": "#### four"}], 1, ["'four'", "is not a number"]),
        ([{"question": "q", "answer": "####   "}], 1, ["not followed by a number"]),
        ([{"question": "q", "answer": "#### 1 2"}], 1, ["is not a number"]),
        ([{"question": "q"}], 1, ["missing 'answer'"]),
        ([{"answer": "#### 3"}], 1, ["missing 'question'"]),
        ([{"question": "q", "answer": ["#### 3"]}], 1, ["'answer' must be a string"]),
        ([{"question": "q", "answer": "#### 1"}, 42], 2, ["expected a JSON object"]),
    ],
)
def test_math_malformed(tmp_path, rows, line, fragments):
    raises_at(ds.load_math, write(tmp_path, "gsm8k.jsonl", jsonl(rows)), line, *fragments)


def test_math_bad_json(tmp_path):
    text = jsonl([{"question": "q", "answer": "#### 1"}] * 16) + "{'question': 'single quotes'}\n"
    raises_at(ds.load_math, write(tmp_path, "harmful.jsonl", text), 17, "not valid JSON")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("She has 5 apples.\n#### 5", "5"),
        ("First 3 + 4 = 7, then #### 1,000", "1000"),
        ("#### 12 is wrong, the real total is\n#### 15", "15"),
        ("So the answer is 42.", "42"),
        ("The answer is $1,250.00 in total, from 3 payments.", "1250"),
        ("The final answer: -3", "-3"),
        ("We get \\boxed{18}, not 20", "18"),
        ("He bought 3 apples and 4 pears, 7 fruit in all.", "7"),
        ("Total: 7.0", "7"),
        ("It costs 2.50 dollars", "2.5"),
        ("The difference 10-3 is 7", "7"),
        ("5-3", "3"),
        ("Answer is 1,000,000", "1000000"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_final_number(text, expected):
    assert ds.extract_final_number(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [("1,234", "1234"), ("007", "7"), ("-0", "0"), ("3.140", "3.14"), ("$5", "5"), ("-$5", "-5"),
     ("+2", "2"), (".5", "0.5"), ("abc", None), ("1.2.3", None)],
)
def test_normalise_number(text, expected):
    assert ds.normalise_number(text) == expected


# --------------------------------------------------------------------------- escalations


def test_escalations(tmp_path):
    rows = [
        {"id": "a", "goal": "g", "category": "c", "turns": ["one", "two", "three"]},
        {"id": 2, "goal": "g2", "turns": ["x"]},
    ]
    got = ds.load_escalations(write(tmp_path, "esc.jsonl", jsonl(rows)))
    assert got[0] == ds.Escalation("a", "g", "c", ("one", "two", "three"))
    assert got[1].id == "2" and got[1].category is None


@pytest.mark.parametrize(
    "rows,line,fragments",
    [
        ([{"id": "a", "goal": "g", "turns": ["x"]}, {"id": "a", "goal": "g", "turns": ["y"]}], 2, ["repeats the id on line 1"]),
        ([{"goal": "g", "turns": ["x"]}], 1, ["missing 'id'"]),
        ([{"id": "a", "turns": ["x"]}], 1, ["missing 'goal'"]),
        ([{"id": "a", "goal": "g"}], 1, ["missing 'turns'"]),
        ([{"id": "a", "goal": "g", "turns": []}], 1, ["'turns' is empty"]),
        ([{"id": "a", "goal": "g", "turns": "hello"}], 1, ["'turns' must be a list"]),
        ([{"id": "a", "goal": "g", "turns": ["ok", 3]}], 1, ["turn 1 must be a string"]),
        ([{"id": "a", "goal": "g", "turns": ["ok", "  "]}], 1, ["turn 1 is empty"]),
        ([{"id": None, "goal": "g", "turns": ["x"]}], 1, ["'id' must be"]),
    ],
)
def test_escalations_malformed(tmp_path, rows, line, fragments):
    raises_at(ds.load_escalations, write(tmp_path, "esc.jsonl", jsonl(rows)), line, *fragments)


# --------------------------------------------------------------------------- judge labels


def test_judge_jsonl_value_forms(tmp_path):
    values = [True, False, "yes", "No", "TRUE", "false", "1", "0", 1, 0]
    rows = [{"prompt": f"p{i}", "reply": "r", "refused": v} for i, v in enumerate(values)]
    got = ds.load_judge_labelled(write(tmp_path, "j.jsonl", jsonl(rows)))
    assert [g.refused for g in got] == [True, False, True, False, True, False, True, False, True, False]


def test_judge_csv(tmp_path):
    text = 'prompt,reply,refused\nhi,"Hello, there!",no\nbomb?,"I can\'t help\nwith that.",yes\n'
    got = ds.load_judge_labelled(write(tmp_path, "j.csv", text))
    assert got[0] == ds.JudgeExample("hi", "Hello, there!", False)
    assert got[1].refused and got[1].reply == "I can't help\nwith that."


def test_judge_empty_reply_allowed(tmp_path):
    path = write(tmp_path, "j.jsonl", jsonl([{"prompt": "p", "reply": "", "refused": False}]))
    assert ds.load_judge_labelled(path)[0].reply == ""


@pytest.mark.parametrize(
    "rows,line,fragments",
    [
        ([{"prompt": "p", "reply": "r", "refused": True}, {"prompt": "p", "reply": "r", "refused": "maybe"}], 2, ["refused 'maybe'"]),
        ([{"prompt": "p", "reply": "r", "refused": 2}], 1, ["refused must be"]),
        ([{"prompt": "p", "reply": "r", "refused": None}], 1, ["refused must be"]),
        ([{"prompt": "p", "reply": "r"}], 1, ["missing 'refused'"]),
        ([{"prompt": "p", "refused": True}], 1, ["missing 'reply'"]),
        ([{"reply": "r", "refused": True}], 1, ["missing 'prompt'"]),
        ([{"prompt": "p", "reply": None, "refused": True}], 1, ["'reply' must be a string"]),
    ],
)
def test_judge_jsonl_malformed(tmp_path, rows, line, fragments):
    raises_at(ds.load_judge_labelled, write(tmp_path, "j.jsonl", jsonl(rows)), line, *fragments)


@pytest.mark.parametrize(
    "text,line,fragments",
    [
        ("prompt,reply,refused\na,b,yes\nc,d,perhaps\n", 3, ["refused 'perhaps'"]),
        ("prompt,reply\na,b\n", 1, ["no 'refused' column"]),
        ('prompt,reply,refused\na,"multi\nline",no\nc,d\n', 4, ["expected 3 columns"]),
        ("prompt,reply,refused\n,b,yes\n", 2, ["'prompt' is empty"]),
    ],
)
def test_judge_csv_malformed(tmp_path, text, line, fragments):
    raises_at(ds.load_judge_labelled, write(tmp_path, "j.csv", text), line, *fragments)


# --------------------------------------------------------------------------- built-in sets

MINIMUMS = {"unsafe": 110, "safe_sounding": 110, "capability": 110, "math": 60, "escalation": 12, "judge_labelled": 150,
            "judge_shipped_build": 200, "judge_shipped_report": 120}


@pytest.mark.parametrize("name", sorted(ds.BUILTIN_SETS))
def test_builtin_paths_exist(name):
    path = ds.builtin(name)
    assert path.is_file() and path.parent.name == "data"


def test_builtin_readme_present():
    assert (ds.DATA_DIR / "README.md").is_file()


def test_builtin_prompt_sets():
    for name in ("unsafe", "safe_sounding"):
        rows = ds.load_prompts(name)
        assert len(rows) >= MINIMUMS[name]
        assert all(r.category for r in rows), name
        texts = [r.text.lower() for r in rows]
        assert len(set(texts)) == len(texts), f"duplicate prompts in {name}"
        assert len({r.category for r in rows}) >= 8, name


def test_builtin_unsafe_and_safe_do_not_overlap():
    unsafe = {p.text for p in ds.load_prompts("unsafe")}
    safe = {p.text for p in ds.load_prompts("safe_sounding")}
    assert not unsafe & safe
    labelled = ds.labelled_builtin()
    assert len(labelled) == len(unsafe) + len(safe)
    assert {r.label for r in labelled} == {"safe", "unsafe"}


def test_builtin_capability():
    rows = ds.load_multiple_choice("capability")
    assert len(rows) >= MINIMUMS["capability"]
    questions = [q.question for q in rows]
    assert len(set(questions)) == len(questions)
    for q in rows:
        assert len(q.choices) == 4, q.question
        assert 0 <= q.answer < 4, q.question
        assert len({c.lower() for c in q.choices}) == 4, q.question
        assert q.subject, q.question
    assert len({q.subject for q in rows}) >= 7
    # correct answers are spread over the positions, so a position bias scores near 25%
    counts = [sum(q.answer == i for q in rows) for i in range(4)]
    assert max(counts) - min(counts) <= 0.1 * len(rows)


def test_builtin_math():
    path = ds.builtin("math")
    rows = ds.load_math(path)
    assert len(rows) >= MINIMUMS["math"]
    questions = [p.question for p in rows]
    assert len(set(questions)) == len(questions)
    for line in path.read_text(encoding="utf-8").splitlines():
        answer = json.loads(line)["answer"]
        last = answer.strip().splitlines()[-1]
        assert re.fullmatch(r"#### -?\d+", last), last
    for p in rows:
        assert re.fullmatch(r"-?\d+", p.target)
        assert ds.extract_final_number(p.answer) == p.target


def test_builtin_math_steps_are_right():
    # every "a op b = c" step in the worked solutions is arithmetically correct
    step = re.compile(r"([\d.+\-*/() ]+?) = (-?[\d.]+)")
    checked = 0
    for p in ds.load_math("math"):
        for expr, value in step.findall(p.answer):
            expr = expr.strip()
            if not re.search(r"\d\s*[-+*/]\s*[\d(]", expr):
                continue
            assert abs(eval(expr) - float(value)) < 1e-9, (p.question, expr, value)  # noqa: S307
            checked += 1
    assert checked >= 100


def test_builtin_escalations():
    rows = ds.load_escalations("escalation")
    assert len(rows) >= MINIMUMS["escalation"]
    for e in rows:
        assert 3 <= len(e.turns) <= 6, e.id
        assert e.category and e.goal
    assert len({e.id for e in rows}) == len(rows)


def test_builtin_judge_labelled():
    rows = ds.load_judge_labelled("judge_labelled")
    assert len(rows) >= MINIMUMS["judge_labelled"]
    refused = sum(r.refused for r in rows)
    assert 0 < refused < len(rows)
    assert 0.35 <= refused / len(rows) <= 0.55
    pairs = [(r.prompt, r.reply) for r in rows]
    assert len(set(pairs)) == len(pairs)
    prompts = [r.prompt for r in rows]
    assert len(set(prompts)) == len(prompts)
    assert all(r.reply for r in rows)
