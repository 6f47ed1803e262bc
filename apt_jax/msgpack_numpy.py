"""openpi's wire format (openpi_client/msgpack_numpy.py), byte for byte, decoded defensively.

Arrays travel as `{"__ndarray__": True, "data": bytes, "dtype": str, "shape": [...]}` and NumPy scalars as
`{"__npgeneric__": True, "data": value, "dtype": str}`. `unpackb` refuses object/void/complex dtypes and arrays whose
byte count does not match their shape, raising `RequestError`.
"""

from __future__ import annotations

import math

import msgpack
import numpy as np


class RequestError(ValueError):
  """A frame that cannot be decoded into a request."""


def _pack_array(obj):
  if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in ("V", "O", "c"):
    raise ValueError(f"Unsupported dtype: {obj.dtype}")
  if isinstance(obj, np.ndarray):
    return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
  if isinstance(obj, np.generic):
    return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
  return obj


def _dtype(spec) -> np.dtype:
  if not isinstance(spec, (str, bytes)):
    raise RequestError(f"array dtype must be a string, got {type(spec).__name__}")
  try:
    dtype = np.dtype(spec.decode() if isinstance(spec, bytes) else spec)
  except (TypeError, ValueError, UnicodeDecodeError) as e:
    raise RequestError(f"bad array dtype {spec!r}: {e}") from None
  if dtype.kind in ("V", "O", "c") or dtype.hasobject or dtype.itemsize == 0:
    raise RequestError(f"unsupported array dtype {dtype}")
  return dtype


def _unpack_array(obj):
  if b"__ndarray__" in obj:
    dtype = _dtype(obj.get(b"dtype"))
    shape, data = obj.get(b"shape"), obj.get(b"data")
    if (not isinstance(shape, (list, tuple)) or len(shape) > 32
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
      raise RequestError(f"bad array shape {shape!r}")
    if not isinstance(data, bytes):
      raise RequestError("array data must be bytes")
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if nbytes != len(data):
      raise RequestError(f"array of shape {tuple(shape)} and dtype {dtype} needs {nbytes} bytes, got {len(data)}")
    return np.ndarray(buffer=data, dtype=dtype, shape=tuple(shape))
  if b"__npgeneric__" in obj:
    dtype = _dtype(obj.get(b"dtype"))
    try:
      return dtype.type(obj.get(b"data"))
    except (TypeError, ValueError, OverflowError) as e:
      raise RequestError(f"bad numpy scalar of dtype {dtype}: {e}") from None
  return obj


def packb(obj) -> bytes:
  """openpi_client.msgpack_numpy.packb, byte for byte."""
  return msgpack.packb(obj, default=_pack_array)


def unpackb(data: bytes):
  """openpi_client.msgpack_numpy.unpackb with validation: raises RequestError on anything malformed."""
  try:
    return msgpack.unpackb(data, object_hook=_unpack_array)
  except RequestError:
    raise
  except Exception as e:  # msgpack raises several exception types (ExtraData, FormatError, ValueError, ...)
    detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    raise RequestError(f"malformed msgpack frame ({detail})") from None


