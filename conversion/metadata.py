"""Embed / read our JSON metadata document in a .tflite file (TFLite `Model.metadata`).

The document (format in backend/model_info.py) is stored as a new buffer referenced by a
metadata entry named METADATA_NAME; an existing entry of that name is replaced. Files are
rewritten through the flatbuffer object API. Two details matter for real models:
- Buffers may live outside the flatbuffer (offset/size into the file; litert-torch does this
  for models over 2 GB). Those bytes are read back from the file and stored inline, so the
  rewritten file never points into bytes that moved.
- Constant buffers are re-aligned to 16 bytes (the stock packer aligns uint8 vectors to 1),
  as the TFLite converter does, so kernels can map weights without copies.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from backend.model_info import METADATA_NAME

FILE_IDENTIFIER = b"TFL3"
BUFFER_ALIGNMENT = 16


class _AlignedBufferT(schema.BufferT):
    """BufferT whose data vector starts on a BUFFER_ALIGNMENT boundary of the output file."""

    @classmethod
    def of(cls, buf: schema.BufferT) -> "_AlignedBufferT":
        out = cls()
        out.data, out.offset, out.size = buf.data, buf.offset, buf.size
        return out

    def Pack(self, builder: flatbuffers.Builder) -> int:
        data_vec = None
        if self.data is not None and len(self.data):
            payload = np.asarray(self.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(payload), BUFFER_ALIGNMENT)
            builder.head -= len(payload)
            builder.Bytes[builder.head:builder.head + len(payload)] = payload
            data_vec = builder.EndVector()
        schema.BufferStart(builder)
        if data_vec is not None:
            schema.BufferAddData(builder, data_vec)
        schema.BufferAddOffset(builder, self.offset)
        schema.BufferAddSize(builder, self.size)
        return schema.BufferEnd(builder)


def _inline_external_buffers(model: schema.ModelT, raw: bytes) -> None:
    for buf in model.buffers or []:
        if buf.offset > 1:  # 0/1 mean "no external data"
            buf.data = np.frombuffer(raw, dtype=np.uint8, count=buf.size, offset=buf.offset)
            buf.offset, buf.size = 0, 0


def embed_metadata(path: str | Path, doc: dict, name: str = METADATA_NAME) -> Path:
    """Store `doc` as UTF-8 JSON in metadata entry `name` of the .tflite at `path` (in place)."""
    path = Path(path)
    raw = path.read_bytes()
    model = schema.ModelT.InitFromPackedBuf(raw, 0)
    _inline_external_buffers(model, raw)
    payload = np.frombuffer(json.dumps(doc, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    model.buffers = [_AlignedBufferT.of(b) for b in (model.buffers or [])]
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() != name]
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers)
    new_buf = _AlignedBufferT()
    new_buf.data = payload
    model.buffers.append(new_buf)
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(raw) + len(payload) + (1 << 20))
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(builder.Output())
    tmp.replace(path)
    return path


def read_metadata(path: str | Path, name: str = METADATA_NAME) -> dict | None:
    """The JSON document stored under `name`, or None when the file has none."""
    raw = Path(path).read_bytes()
    model = schema.Model.GetRootAs(raw, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() != name:
            continue
        buf = model.Buffers(entry.Buffer())
        data = buf.DataAsNumpy().tobytes() if buf.DataLength() else raw[buf.Offset():buf.Offset() + buf.Size()]
        return json.loads(data.decode("utf-8"))
    return None
