from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data", "coding")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CODING_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    coding: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., coding: _Optional[str] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("kind", "client_id", "round", "step", "seq", "cut", "train", "tensors", "loss_sum", "n_tokens", "n_correct", "n_samples", "error", "codec", "report", "server_s")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[Envelope.Kind]
        STEP: _ClassVar[Envelope.Kind]
        STEP_REPLY: _ClassVar[Envelope.Kind]
        PUSH: _ClassVar[Envelope.Kind]
        PULL: _ClassVar[Envelope.Kind]
        ADAPTERS: _ClassVar[Envelope.Kind]
        ACK: _ClassVar[Envelope.Kind]
        ERROR: _ClassVar[Envelope.Kind]
        HEARTBEAT: _ClassVar[Envelope.Kind]
        DONE: _ClassVar[Envelope.Kind]
        HELLO: _ClassVar[Envelope.Kind]
        WELCOME: _ClassVar[Envelope.Kind]
        BACKWARD: _ClassVar[Envelope.Kind]
    UNKNOWN: Envelope.Kind
    STEP: Envelope.Kind
    STEP_REPLY: Envelope.Kind
    PUSH: Envelope.Kind
    PULL: Envelope.Kind
    ADAPTERS: Envelope.Kind
    ACK: Envelope.Kind
    ERROR: Envelope.Kind
    HEARTBEAT: Envelope.Kind
    DONE: Envelope.Kind
    HELLO: Envelope.Kind
    WELCOME: Envelope.Kind
    BACKWARD: Envelope.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CUT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    LOSS_SUM_FIELD_NUMBER: _ClassVar[int]
    N_TOKENS_FIELD_NUMBER: _ClassVar[int]
    N_CORRECT_FIELD_NUMBER: _ClassVar[int]
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    SERVER_S_FIELD_NUMBER: _ClassVar[int]
    kind: Envelope.Kind
    client_id: int
    round: int
    step: int
    seq: int
    cut: int
    train: bool
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    loss_sum: float
    n_tokens: int
    n_correct: int
    n_samples: int
    error: str
    codec: str
    report: str
    server_s: float
    def __init__(self, kind: _Optional[_Union[Envelope.Kind, str]] = ..., client_id: _Optional[int] = ..., round: _Optional[int] = ..., step: _Optional[int] = ..., seq: _Optional[int] = ..., cut: _Optional[int] = ..., train: _Optional[bool] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., loss_sum: _Optional[float] = ..., n_tokens: _Optional[int] = ..., n_correct: _Optional[int] = ..., n_samples: _Optional[int] = ..., error: _Optional[str] = ..., codec: _Optional[str] = ..., report: _Optional[str] = ..., server_s: _Optional[float] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("seq", "index", "count", "data")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    seq: int
    index: int
    count: int
    data: bytes
    def __init__(self, seq: _Optional[int] = ..., index: _Optional[int] = ..., count: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
