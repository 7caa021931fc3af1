"""The wheel carries the stream's contract: the .proto files and a descriptor set that
decodes an envelope with no generated code at all."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from services.wire.codec import encode_event
from tests.builders import T0, granted

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["consent/v1/ledger.proto", "consent/v1/consent_service.proto"]
DESCRIPTORS = "consent/v1/consent_v1.binpb"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """A wheel built from a copy of the checkout (committed and new files), so the
    build leaves nothing behind in the working tree."""
    tmp = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    source = tmp / "src"
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "out"), str(source)],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    (built,) = (tmp / "out").glob("consent_ledger-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_ships_every_proto_file_as_in_the_checkout(wheel: zipfile.ZipFile) -> None:
    for name in SHIPPED:
        assert wheel.read(name) == (ROOT / "protos" / name).read_bytes(), name


def test_the_wheel_ships_the_descriptor_set_and_the_consumer_library(
    wheel: zipfile.ZipFile,
) -> None:
    names = set(wheel.namelist())

    assert DESCRIPTORS in names
    assert {"services/consumer/stream.py", "services/consumer/opt_out_table.py"} <= names


def test_the_shipped_descriptor_set_alone_decodes_an_envelope(wheel: zipfile.ZipFile) -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(wheel.read(DESCRIPTORS))
    pool = descriptor_pool.DescriptorPool()  # not the default pool: no generated code
    for file in files.file:  # imports first, as protoc --include_imports writes them
        pool.Add(file)
    envelope_class = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("consent.v1.EventEnvelope")
    )
    event = granted(T0, "spring-promo")

    envelope = envelope_class.FromString(encode_event(event))

    assert envelope.event_id == str(event.event_id)
    assert envelope.event_type == "ConsentGranted"
    assert envelope.consent_granted.campaign == "spring-promo"
    assert envelope.consent_granted.proof.email == event.proof.email
    # comments travel too, for tools that show them (grpcurl describe, IDEs)
    ledger_file = next(f for f in files.file if f.name == "consent/v1/ledger.proto")
    assert ledger_file.source_code_info.location
