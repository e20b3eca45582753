"""The server-sent events parser: the WHATWG format, cut at every possible place."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oaiws._sse import SSEParser, SSETooLargeError, events_of

LIMIT = 1 << 20
_LINE = st.binary(max_size=12).filter(lambda line: b"\n" not in line and b"\r" not in line)


def parse(*chunks: bytes, limit: int = LIMIT) -> list[tuple[str, bytes]]:
    return list(events_of(chunks, limit))


def test_an_event_with_a_name_and_data() -> None:
    body = b'event: response.created\ndata: {"type":"response.created"}\n\n'
    assert parse(body) == [("response.created", b'{"type":"response.created"}')]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert parse(b"data: one\ndata: two\ndata:three\n\n") == [("", b"one\ntwo\nthree")]


def test_only_one_leading_space_is_removed() -> None:
    assert parse(b"data:  two spaces\n\n") == [("", b" two spaces")]


def test_comments_and_unknown_fields_are_skipped() -> None:
    body = b": keep-alive\nid: 7\nretry: 100\nfoo: bar\ndata: x\n\n:\n\n"
    assert parse(body) == [("", b"x")]


@pytest.mark.parametrize("end", [b"\r\n", b"\r", b"\n"])
def test_every_line_ending(end: bytes) -> None:
    body = b"event: e" + end + b"data: 1" + end + b"data: 2" + end + end
    assert parse(body) == [("e", b"1\n2")]


def test_a_crlf_split_across_two_reads_is_one_line_end() -> None:
    assert parse(b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n") == [("", b"a"), ("", b"b")]


def test_a_blank_line_without_data_dispatches_nothing_and_resets_the_name() -> None:
    assert parse(b"event: ignored\n\ndata: x\n\n") == [("", b"x")]


def test_a_last_event_without_its_blank_line_is_still_dispatched() -> None:
    assert parse(b"data: first\n\ndata: last") == [("", b"first"), ("", b"last")]
    assert parse(b"data: last\n") == [("", b"last")]


def test_a_line_longer_than_the_limit_is_refused() -> None:
    parser = SSEParser(100)
    with pytest.raises(SSETooLargeError):
        parser.feed(b"data: " + b"x" * 200)


def test_data_larger_than_the_limit_is_refused_even_in_short_lines() -> None:
    parser = SSEParser(100)
    with pytest.raises(SSETooLargeError):
        for _ in range(20):
            parser.feed(b"data: 0123456789\n")


@given(
    events=st.lists(
        st.tuples(
            st.text(alphabet="abc.", max_size=8),
            st.lists(_LINE, min_size=1, max_size=3),
        ),
        max_size=5,
    ),
    end=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    cuts=st.lists(st.integers(0, 400), max_size=10),
)
def test_any_split_of_the_body_gives_the_same_events(
    events: list[tuple[str, list[bytes]]], end: bytes, cuts: list[int]
) -> None:
    body = b""
    expected = []
    for name, lines in events:
        if name:
            body += b"event: " + name.encode() + end
        for line in lines:
            body += b"data: " + line + end
        body += end
        expected.append((name, b"\n".join(lines)))
    points = sorted({min(cut, len(body)) for cut in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)])]
    assert parse(*chunks) == expected


def test_a_byte_order_mark_opening_the_stream_is_dropped() -> None:
    assert parse(b"\xef\xbb\xbf", b"data: x\n\n") == [("", b"x")]
    assert parse(b"data: \xef\xbb\xbfkept\n\n") == [("", b"\xef\xbb\xbfkept")]
