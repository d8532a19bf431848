import json

import pytest

from hybridllm.tables.format import TableError, prompt_text, read_table, select_pair, split_rows, write_table

GOOD = {"id": "a", "prompt": "hi", "quality": {"s": [1, 0], "l": [1.0]}}


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"id": "b", "prompt": "x"', r"t\.jsonl:2: row: invalid JSON"),
        ('{"prompt": "x"}', r"t\.jsonl:2: id: missing"),
        ('{"id": "b"}', r"t\.jsonl:2: prompt: missing"),
        ('{"id": "b", "prompt": 3}', r"t\.jsonl:2: prompt: expected a string or a list of messages"),
        (
            '{"id": "b", "prompt": "x", "quality": {"s": [1, "high"]}}',
            r"t\.jsonl:2: quality\.s\[1\]: expected a finite number",
        ),
        (
            '{"id": "b", "prompt": "x", "quality": {"s": [NaN]}}',
            r"t\.jsonl:2: quality\.s\[0\]: expected a finite number",
        ),
        ('{"id": "b", "prompt": "x", "quality": {"s": 1}}', r"t\.jsonl:2: quality\.s: expected a list"),
        ('{"id": "a", "prompt": "x"}', r"t\.jsonl:2: id: duplicate id 'a' \(first on line 1\)"),
        ('{"id": "b", "prompt": [{"role": "user"}]}', r"t\.jsonl:2: prompt\[0\]: expected a message object"),
        (
            '{"id": "b", "prompt": "x", "responses": {"s": ["a"]}, "quality": {"s": [1, 0]}}',
            r"t\.jsonl:2: quality\.s: 2 values for 1 responses",
        ),
        ("[1, 2]", r"t\.jsonl:2: row: expected a JSON object"),
    ],
)
def test_validation_errors_name_file_line_field(tmp_path, line, expected):
    p = write_lines(tmp_path / "t.jsonl", [json.dumps(GOOD), line])
    with pytest.raises(TableError, match=expected) as info:
        read_table(p)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(TableError, match="file not found"):
        read_table(tmp_path / "nope.jsonl")


def test_roundtrip_jsonl_and_parquet_keep_everything(tmp_path):
    rows = [
        {
            "id": "1",
            "prompt": "p1",
            "reference": "72",
            "responses": {"s": ["a", "b"]},
            "quality": {"s": [0.0, 1.0], "l": [1.0]},
            "meta": {"category": "math", "n": 3},
        },
        {
            "id": "2",
            "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"}],
            "quality": {"s": [1.0]},
        },
        {"id": "3", "prompt": "p3", "extra_field": "kept"},
    ]
    for name in ("t.jsonl", "t.parquet"):
        p = write_table(rows, tmp_path / name)
        back = read_table(p)
        assert len(back) == 3
        assert back[0] == rows[0]
        assert back[1]["prompt"] == rows[1]["prompt"]
        assert back[1]["quality"] == rows[1]["quality"]
    assert read_table(tmp_path / "t.jsonl")[2]["extra_field"] == "kept"


def test_blank_lines_are_ignored_and_numbers_coerced(tmp_path):
    p = write_lines(tmp_path / "t.jsonl", [json.dumps({"id": 7, "prompt": "x", "reference": 72}), "", "  "])
    rows = read_table(p)
    assert rows == [{"id": "7", "prompt": "x", "reference": "72"}]


def test_select_pair_reports_skipped():
    rows = [GOOD, {"id": "b", "prompt": "y", "quality": {"s": [1.0]}}, {"id": "c", "prompt": "z"}]
    pair = select_pair(rows, "s", "l")
    assert [r["id"] for r in pair.rows] == ["a"]
    assert pair.skipped == 2
    with pytest.raises(TableError, match="no row has quality for both 's' and 'x'"):
        select_pair(rows, "s", "x")


def test_split_is_deterministic_and_order_free():
    rows = [{"id": f"q{i}", "prompt": "x"} for i in range(2000)]
    a = split_rows(rows, [0.6, 0.2, 0.2])
    b = split_rows(list(reversed(rows)), [0.6, 0.2, 0.2])
    assert [sorted(r["id"] for r in part) for part in a] == [sorted(r["id"] for r in part) for part in b]
    sizes = [len(p) for p in a]
    assert sum(sizes) == 2000
    assert 1100 < sizes[0] < 1300 and 330 < sizes[1] < 470


def test_prompt_text_for_chat():
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": [{"type": "text", "text": "u2"}]},
    ]
    assert prompt_text(msgs) == "u1\nu2"
    assert prompt_text(msgs, "last") == "u2"
