"""Hostile-input corpus: the fault classes of issue 21, sent through real associations.

`corpus()` generates the inputs (each with the status class it must get):

* structure: a sequence nested 3000 deep after StudyInstanceUID (also inside a UN of
  undefined length), one element more than the node's limit, PixelData claiming
  0x7FFFFFF0 bytes and carrying 64 KiB, PixelData shorter than its pixel description, a
  Deflated data set inflating beyond the node's limit: refused, never 0x0000;
* valid but unusual headers, all in one study with one RT Plan and one CT without pixel
  data: SpecificCharacterSet ``\\ISO 2022 IR 149``, StudyTime ``10:30:00``, no Modality,
  PatientBirthDate ``1961-07-04``, PatientSex ``Female``, a 30-deep sequence in the source
  (under the node's nesting limit): accepted, and every instance ends in a score or a
  reasoned "not analysed" in the study's SR;
* every file of pydicom's own test files (`pydicom_test_files`), sent as stored.

`Recorder` is a real pynetdicom Storage SCP the node delivers its results to (C-STORE); the
test (``tests/unit/dicom_node/test_node_hostile.py``) asserts, per input, the status, that the
node still answers C-ECHO, that every acknowledged instance ends in a result or a reasoned
"not analysed", and that no result carries a sequence deeper than its IOD needs.
"""

from __future__ import annotations

import copy
import struct
import time
import zlib
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE

from ai_engine.dicom_io.markers import is_derived_object

REPO = Path(__file__).resolve().parents[1]
CXR = REPO / "tests" / "data" / "dicom" / "kermany_normal_mono2" / "kermany_normal_mono2.dcm"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Outputs' deepest sequence nesting their IODs need (SR content tree: report -> container
#: -> group -> items with concept/value sequences).
MAX_RESULT_DEPTH = 8
REFUSED = "refused"
ACCEPTED = "accepted"
#: Accepted, but another system's result object (SEG, SR, Parametric Map): acknowledged and
#: not analysed (`markers.is_derived_object`), with no SR entry.
RESULT_OBJECT = "result"


@dataclass
class CorpusInput:
    """One input.

    Attributes:
        name: what it is.
        expected: ``accepted`` (0x0000) or ``refused`` (a failure status).
        dataset: a data set pynetdicom encodes (None for raw inputs).
        raw: the data set bytes, sent as they are, and their transfer syntax.
        sop_uid: its SOP Instance UID.
        study_uid: its Study Instance UID ("" for raw inputs without one).
    """

    name: str
    expected: str
    dataset: Dataset | None = None
    raw: tuple[bytes, str] | None = None
    sop_uid: str = ""
    study_uid: str = ""


def _element(tag: int, vr: str, value: bytes) -> bytes:
    group, elem = tag >> 16, tag & 0xFFFF
    if vr in ("OB", "OW", "SQ", "UN", "UT"):
        return struct.pack("<HH2sHI", group, elem, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr.encode(), len(value)) + value


def _uid(value: str) -> bytes:
    data = value.encode()
    return data + b"\x00" * (len(data) % 2)


def _raw_header(sop: str, study: str) -> bytes:
    return b"".join(
        (
            _element(0x00080016, "UI", _uid(CT_IMAGE_STORAGE)),
            _element(0x00080018, "UI", _uid(sop)),
            _element(0x0020000D, "UI", _uid(study)),
            _element(0x0020000E, "UI", _uid(generate_uid())),
        )
    )


def deep_sequence_bytes(depth: int) -> bytes:
    """A (0040,0275) sequence nested ``depth`` deep, undefined lengths (explicit VR LE)."""
    head = struct.pack("<HH2sHI", 0x0040, 0x0275, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    tail = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (head + item) * depth + tail * depth


def _cxr(study: str, series: str) -> Dataset:
    ds = dcmread(CXR)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _nested(depth: int) -> Sequence:
    inner = Dataset()
    inner.CodeValue = "1"
    for _ in range(depth - 1):
        outer = Dataset()
        outer.ProcedureCodeSequence = Sequence([inner])
        inner = outer
    return Sequence([inner])


def corpus(max_inflated_bytes: int, max_elements: int = 10_000) -> list[CorpusInput]:
    """The generated inputs (see the module docstring).

    Args:
        max_inflated_bytes: the node's inflate limit; the deflate bomb inflates to twice it.
        max_elements: the node's element limit; one input has one element more.

    Returns:
        The inputs, in sending order.
    """
    inputs: list[CorpusInput] = []

    def raw(name: str, body: bytes, syntax: str = ExplicitVRLittleEndian, **kw: Any) -> None:
        inputs.append(CorpusInput(name, REFUSED, raw=(body, syntax), **kw))

    sop, study = generate_uid(), generate_uid()
    raw("sequence nested 3000 deep", _raw_header(sop, study) + deep_sequence_bytes(3000),
        sop_uid=sop, study_uid=study)  # fmt: skip
    sop = generate_uid()
    unknown = struct.pack("<HH2sHI", 0x0009, 0x1010, b"UN", 0, 0xFFFFFFFF)
    nested = (struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + struct.pack(
        "<HHI", 0x0009, 0x1010, 0xFFFFFFFF)) * 3000  # implicit VR inside UN  # fmt: skip
    raw("UN of undefined length nested 3000 deep", _raw_header(sop, generate_uid()) + unknown
        + nested, sop_uid=sop)  # fmt: skip
    sop = generate_uid()
    many = b"".join(_element(0x00091000 | (i % 0xFF), "LO", b"xx") for i in range(max_elements + 1))
    raw(f"{max_elements + 1} elements", _raw_header(sop, generate_uid()) + many, sop_uid=sop)
    sop = generate_uid()
    claims = _raw_header(sop, generate_uid()) + b"".join(
        (
            _element(0x00280010, "US", struct.pack("<H", 64)),
            _element(0x00280011, "US", struct.pack("<H", 64)),
            struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 0x7FFFFFF0) + bytes(65536),
        )
    )
    raw("PixelData claims 0x7FFFFFF0 bytes, carries 64 KiB", claims, sop_uid=sop)
    sop = generate_uid()
    short = _raw_header(sop, generate_uid()) + b"".join(
        (
            _element(0x00280002, "US", struct.pack("<H", 1)),
            _element(0x00280010, "US", struct.pack("<H", 64)),
            _element(0x00280011, "US", struct.pack("<H", 64)),
            _element(0x00280100, "US", struct.pack("<H", 16)),
            _element(0x7FE00010, "OW", bytes(1000)),
        )
    )
    raw("PixelData shorter than Rows x Columns x 2", short, sop_uid=sop)
    sop = generate_uid()
    plain = _raw_header(sop, generate_uid()) + _element(
        0x00091010, "OB", bytes(2 * max_inflated_bytes)
    )
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = compressor.compress(plain) + compressor.flush()
    raw(f"deflate bomb ({len(bomb)} bytes)", bomb, DeflatedExplicitVRLittleEndian, sop_uid=sop)

    study, series = generate_uid(), generate_uid()
    edits: list[tuple[str, Any]] = [
        ("SpecificCharacterSet \\ISO 2022 IR 149",
         lambda ds: setattr(ds, "SpecificCharacterSet", ["", "ISO 2022 IR 149"])),
        ("StudyTime 10:30:00", lambda ds: setattr(ds, "StudyTime", "10:30:00")),
        ("no Modality", lambda ds: delattr(ds, "Modality")),
        ("PatientBirthDate 1961-07-04", lambda ds: setattr(ds, "PatientBirthDate", "1961-07-04")),
        ("PatientSex Female", lambda ds: setattr(ds, "PatientSex", "Female")),
        ("30-deep sequence in the source",
         lambda ds: setattr(ds, "ProcedureCodeSequence", _nested(30))),
        ("plain radiograph", lambda ds: None),
        ("SeriesDescription with a newline (log forging)",
         lambda ds: setattr(ds, "SeriesDescription", "x\nCRITICAL forged")),
    ]  # fmt: skip
    for name, edit in edits:
        ds = _cxr(study, series)
        edit(ds)
        inputs.append(CorpusInput(name, ACCEPTED, ds, sop_uid=ds.SOPInstanceUID, study_uid=study))
    for name, keep_pixels in (("rtplan.dcm", True), ("CT_small.dcm", False)):
        ds = dcmread(get_testdata_file(name))  # type: ignore[arg-type]
        ds = copy.deepcopy(ds)
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = generate_uid()
        if not keep_pixels:
            del ds.PixelData
        label = "RT Plan in the study" if keep_pixels else "CT without pixel data in the study"
        inputs.append(CorpusInput(label, ACCEPTED, ds, sop_uid=ds.SOPInstanceUID, study_uid=study))

    for path in pydicom_test_files():
        name = path.name
        ds = dcmread(path, force=True)
        syntax = _transfer_syntax(ds)
        if syntax is None:
            continue  # no file meta and no way to tell how to send it
        # the node refuses (0xC210) what it cannot file: a truncated data set, or one
        # without the UIDs that name its study and instance
        broken = "truncated" in name or not all(
            k in ds for k in ("StudyInstanceUID", "SOPInstanceUID")
        )
        derived = is_derived_object(str(ds.get("SOPClassUID", "")))
        inputs.append(
            CorpusInput(
                f"pydicom {name}",
                REFUSED if broken else RESULT_OBJECT if derived else ACCEPTED,
                raw=(_dataset_bytes(path), syntax),
                sop_uid=str(ds.get("SOPInstanceUID", generate_uid())),
                study_uid=str(ds.get("StudyInstanceUID", "")),
            )
        )
    return inputs


def pydicom_test_files() -> list[Path]:
    """Every DICOM file of pydicom's own test files (the top folder; DICOMDIRs aside)."""
    anchor = get_testdata_file("CT_small.dcm")
    if anchor is None:
        raise RuntimeError("pydicom's test files are not installed")
    return sorted(Path(anchor).parent.glob("*.dcm"))


def _transfer_syntax(ds: Dataset) -> str | None:
    """The transfer syntax a file was stored in (from its meta, else how pydicom read it)."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return str(meta.TransferSyntaxUID)
    implicit, little = ds.original_encoding
    if implicit is None:
        return None
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _dataset_bytes(path: Path) -> bytes:
    """A file's data set bytes exactly as stored (after preamble and file meta)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with path.open("rb") as fh:
        read_preamble(fh, True)  # files without a preamble and meta too
        _read_file_meta_info(fh)
        return fh.read()


def encode(ds: Dataset) -> bytes:
    """A data set encoded as Explicit VR Little Endian (no file meta)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return bytes(buffer.getvalue())


def send(port: int, item: CorpusInput, calling_ae: str, called_ae: str = "AINODE") -> int | None:
    """C-STORE one input byte for byte over a fresh association; the status (None: none)."""
    body, syntax = (
        item.raw if item.raw is not None else (encode(item.dataset), ExplicitVRLittleEndian)
    )  # type: ignore[arg-type]
    sop_class = CT_IMAGE_STORAGE
    if item.dataset is not None:
        sop_class = str(item.dataset.SOPClassUID)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        return None
    try:
        context = assoc.accepted_contexts[0]
        req = C_STORE()
        req.MessageID = 1
        req.AffectedSOPClassUID = sop_class
        req.AffectedSOPInstanceUID = item.sop_uid
        req.Priority = 2
        req.DataSet = BytesIO(body)
        assoc._reactor_checkpoint.clear()
        try:
            while not assoc._is_paused and assoc.is_established:
                time.sleep(0.0001)
            assoc.dimse.send_msg(req, context.context_id)
            _, rsp = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        status = getattr(rsp, "Status", None) if rsp is not None else None
        return int(status) if status is not None else None
    finally:
        if assoc.is_established:
            assoc.release()


def echo(port: int, calling_ae: str, called_ae: str = "AINODE") -> bool:
    """Whether the node answers C-ECHO."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


def max_sequence_depth(ds: Dataset) -> int:
    """The deepest sequence nesting in a data set (iterative)."""
    deepest = 0
    stack: list[tuple[Dataset, int]] = [(ds, 0)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        for elem in current:
            if elem.VR == "SQ":
                stack.extend((item, depth + 1) for item in elem.value)
    return deepest


@dataclass
class Recorder:
    """A real Storage SCP (``ORTHANC``) keeping every result the node delivers."""

    ae_title: str = "ORTHANC"
    received: list[Dataset] = field(default_factory=list)
    server: Any = None

    def start(self) -> Recorder:
        """Listen on an ephemeral loopback port."""
        ae = AE(ae_title=self.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(
                cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
            )
        self.server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        return self

    def _store(self, event: Any) -> int:
        self.received.append(event.dataset)
        return 0x0000

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop listening."""
        self.server.shutdown()
