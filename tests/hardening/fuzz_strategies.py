"""Hypothesis strategies for hostile requests to both services.

Nothing generated here can be fetched or decoded into a real image, so no example reaches the
model: every one ends in validation, URL vetting or decoding, and thousands fit in a minute.
"""

from __future__ import annotations

from hypothesis import strategies as st
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.persistence.v1 import persistence_pb2 as ppb

from tests.support.imaging import crafted_png

# Protobuf strings are UTF-8: lone surrogates cannot even be serialised (byte mutation below
# produces invalid UTF-8 on the wire instead).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)

# Hosts refused before any connection: by the URL parser, by name, or malformed.
HOSTS = st.sampled_from(
    [
        "metadata.google.internal",
        "metadata",
        "instance-data",
        "db.internal",
        "printer.local",
        "0x7f.1",
        "2130706433",
        "127.1",
        "[fe80::1%25eth0]",
        "[::1]:0",
        "user@host.test",
        "a..b",
        "-x-.test",
        "exa mple.test",
        "%31%32%37.0.0.1",
        "[::ffff:127.0.0.1",
        "ex\\ample.test",
        "",
    ]
)
# The finding: unbalanced brackets that urlsplit rejects with "Invalid IPv6 URL".
BRACKET_URIS = st.sampled_from(
    ["https://[", "http://[::1", "https://x]/a.jpg", "https://[::1]]/", "http://]["]
)
URIS = st.one_of(
    BRACKET_URIS,
    st.builds(
        "{}://{}{}".format,
        st.sampled_from(["https", "http", "HTTPS", "ftp", "file", "gopher", "javascript", ""]),
        HOSTS,
        st.sampled_from(["", "/", "/a.jpg", "/a.jpg?sig=x", "/%zz", "/../../etc/passwd", "#f"]),
    ),
    TEXT,
)
_JUNK_IMAGES = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            crafted_png(100_000, 100_000),  # over every pixel limit, refused from the header
            crafted_png(9000, 9000),
            crafted_png(0, 0),
            b"\x89PNG\r\n\x1a\n",
            b"\xff\xd8\xff\xe0" + b"\x00" * 64,
            b"RIFF\x00\x00\x00\x00WEBPVP8 ",
            b"GIF89a" + b"\x00" * 32,
        ]
    ),
)


def images(uris: st.SearchStrategy[str]) -> st.SearchStrategy[list[pb.Image]]:
    image = st.one_of(
        st.builds(pb.Image, uri=uris),
        st.builds(pb.Image, content=_JUNK_IMAGES),
        st.just(pb.Image()),
    )
    return st.lists(image, max_size=12)


QUESTIONS = st.lists(
    st.builds(pb.Question, type=TEXT, label=TEXT, value_to_check=TEXT, mandatory=st.booleans()),
    max_size=6,
)
IDS = st.one_of(st.just(""), st.uuids().map(str), TEXT)
LEGACY = st.one_of(
    st.just(""),
    TEXT,
    st.sampled_from(
        [
            "{'Question': [{'Type': 'T', 'Label': 'L', 'ValueToCheck': 'V'}]}",
            '{"Question": "not a list"}',
            "[" * 500,
            "{'Question': [" + "{}," * 200 + "]}",
        ]
    ),
)


def inspect_requests(uris: st.SearchStrategy[str]) -> st.SearchStrategy[pb.InspectRequest]:
    """Half wholly random, half valid but for their images, so they reach fetch and decode."""
    return st.one_of(_random_requests(uris), _plausible_requests(uris))


def _plausible_requests(uris: st.SearchStrategy[str]) -> st.SearchStrategy[pb.InspectRequest]:
    hostile = images(uris).filter(bool)
    return st.builds(
        pb.InspectRequest,
        inspection_id=st.one_of(st.just(""), st.uuids().map(str)),
        shipping_id=st.one_of(st.just("SHIP-FUZZ"), TEXT.filter(str.strip)),
        product_name=st.one_of(st.just("ACME mug"), TEXT.filter(str.strip)),
        reference_images=hostile,
        pickup_images=hostile,
        questions=st.just(
            [pb.Question(type="Colour", label="Is it red?", value_to_check="Yes", mandatory=True)]
        ),
    )


def _random_requests(uris: st.SearchStrategy[str]) -> st.SearchStrategy[pb.InspectRequest]:
    return st.builds(
        pb.InspectRequest,
        inspection_id=IDS,
        previous_inspection_id=IDS,
        shipping_id=TEXT,
        product_id=TEXT,
        product_name=TEXT,
        reference_images=images(uris),
        pickup_images=images(uris),
        questions=QUESTIONS,
        legacy_questions_json=LEGACY,
    )


PERSISTENCE_REQUESTS: st.SearchStrategy[tuple[str, bytes]] = st.one_of(
    st.builds(ppb.GetInspectionRequest, inspection_id=IDS).map(
        lambda m: ("GetInspection", m.SerializeToString())
    ),
    st.builds(
        ppb.ListInspectionsRequest,
        shipping_id=TEXT,
        page_size=st.integers(-(2**31), 2**31 - 1),
        page_token=st.one_of(TEXT, st.binary(max_size=40).map(lambda b: b.hex())),
    ).map(lambda m: ("ListInspections", m.SerializeToString())),
    st.builds(
        ppb.RecordEventsRequest,
        events=st.lists(
            st.builds(ppb.Event, event_id=IDS, inspection_id=IDS),
            max_size=3,
        ),
    ).map(lambda m: ("RecordEvents", m.SerializeToString())),
)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A serialised message with bytes flipped, inserted, deleted or cut off, or pure noise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "varint"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[at:]
        elif op == "varint":  # an overlong or huge length prefix
            data[at:at] = b"\x0a" + b"\xff" * draw(st.integers(1, 10))
    return bytes(data)
