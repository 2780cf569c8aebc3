from steerchat.tui.sanitize import one_line, sanitize


def test_escape_sequences_become_visible_pictures():
    assert sanitize("\x1b[2J\x1b[H") == "␛[2J␛[H"
    assert sanitize("bell\x07") == "bell␇"
    assert sanitize("a\x7fb\x9bc") == "a␡b\ufffdc"


def test_newline_and_tab_survive_and_crlf_is_normalised():
    assert sanitize("a\tb\nc\r\nd\re") == "a\tb\nc\nd␍e"


def test_one_line_flattens_and_cuts():
    assert one_line("a\n b\x1b", 10) == "a b␛"
    assert one_line("x" * 20, 10) == "x" * 9 + "…"
