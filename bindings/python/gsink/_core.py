"""Pythonic classes over the C API: Config, Model, Optimizer, Tokenizer."""

import ctypes
import enum
import functools
import json
import operator
import threading
import weakref

import numpy as np

from . import _lib as L
from . import errors as E

_lib = L.lib

ALL_HEADS = -1
BACKWARD_ACCUMULATE = 1
ENCODE_PARSE_SPECIAL = 1
ENCODE_ADD_BOS = 2

_INT_MIN, _INT_MAX = -(2 ** 31), 2 ** 31 - 1


class Site(enum.IntEnum):
    """Activation sites of one layer (gsink_site). Names are stable API."""
    RESID_IN = 0
    ATTN_NORM_OUT = 1
    Q = 2
    K = 3
    V = 4
    V_SCALED = 5
    ATTN_OUT = 6
    RESID_MID = 7
    MLP_NORM_OUT = 8
    MLP_OUT = 9
    RESID_OUT = 10
    Z = 11
    MLP_PRE = 12
    MLP_UP = 13
    MLP_POST = 14


SITE_COUNT = 15


class BatchAgg(enum.IntEnum):
    SUM_THEN_NORM = 0
    PER_SEQUENCE = 1


class Branch(enum.IntEnum):
    ATTN = 0
    MLP = 1


class VScaleMode(enum.IntEnum):
    OFF = 0
    FULL = 1
    BACKWARD_ONLY = 2


class DeviceKind(enum.IntEnum):
    CPU = 0
    CUDA = 1


class Precision(enum.IntEnum):
    FP32 = 0
    TF32 = 1  # CUDA only
    BF16 = 2  # CUDA only


class WeightDtype(enum.IntEnum):
    """Storage type of the weight matrices (gsink_weight_dtype); compute stays fp32."""
    FP32 = 0
    BF16 = 1
    FP16 = 2


# gsink_model_flags
MODEL_DISCARD_SITE_GRADS = 1
MODEL_ANALYSIS = 2
MODEL_DISCARD_SITE_ACTIVATIONS = 4
# gsink_memory_flags
MEMORY_RESET_PEAK = 1


# ---------------------------------------------------------------------------
# helpers


def _text(b):
    return b.decode("utf-8", "replace") if b is not None else None


def _raise(status, message):
    if not message:
        message = _text(_lib.gsink_status_str(status)) or "error %d" % status
    raise E.error_class(status)(message, status)


def _check(status):
    """Raises the exception for a failed handle-less call."""
    if status != 0:
        _raise(status, _text(_lib.gsink_last_error()))


def _take_string(p):
    """The text of a library-allocated string (a c_void_p filled by the
    library), freed with gsink_free."""
    try:
        return ctypes.string_at(p.value).decode("utf-8")
    finally:
        _lib.gsink_free(p)


def _cint(x, name):
    try:
        v = operator.index(x)
    except TypeError:
        raise TypeError("%s must be an integer, got %s" % (name, type(x).__name__)) from None
    if not _INT_MIN <= v <= _INT_MAX:
        raise OverflowError("%s=%d does not fit in a C int" % (name, v))
    return v


def _enum_arg(x, enum_cls, name):
    """Accepts an enum member, its int value or its (case-insensitive) name."""
    if isinstance(x, str):
        key = x.strip().upper().replace("-", "_")
        try:
            return int(enum_cls[key])
        except KeyError:
            raise ValueError("unknown %s %r (expected one of %s)"
                             % (name, x, ", ".join(m.name.lower() for m in enum_cls))) from None
    return _cint(x, name)


def _tokens_array(a, name):
    """int32, C-contiguous, 2-D (batch, seq) view of a; copies only if needed."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu":
        raise TypeError("%s must be an integer array, got dtype %s" % (name, arr.dtype))
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    elif arr.ndim != 2:
        raise ValueError("%s must have shape (batch, seq_len) or (seq_len,), got %s"
                         % (name, arr.shape))
    if arr.dtype != np.int32:
        if arr.size and (int(arr.min()) < _INT_MIN or int(arr.max()) > _INT_MAX):
            raise ValueError("%s has values outside the int32 range" % name)
        arr = arr.astype(np.int32)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    if arr.shape[0] > _INT_MAX or arr.shape[1] > _INT_MAX:
        raise ValueError("%s shape %s too large" % (name, arr.shape))
    return arr


def _float_input(a, name, shape):
    """float32 C-contiguous array holding a's values, with numel(shape)
    entries; a may have exactly `shape` or be flat."""
    arr = np.asarray(a)
    if arr.dtype.kind != "f":
        raise TypeError("%s must be a floating-point array, got dtype %s" % (name, arr.dtype))
    shape = tuple(int(s) for s in shape)
    numel = int(np.prod(shape)) if shape else 1
    if arr.shape != shape and not (arr.ndim == 1 and arr.size == numel):
        raise ValueError("%s must have shape %s (or be flat with %d values), got %s"
                         % (name, shape, numel, arr.shape))
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return arr


def _out_array(out, shape, name="out"):
    """A fresh float32 array of shape, or the caller's after validation."""
    shape = tuple(int(s) for s in shape)
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if not isinstance(out, np.ndarray):
        raise TypeError("%s must be a numpy.ndarray" % name)
    if out.dtype != np.float32:
        raise TypeError("%s must have dtype float32, got %s" % (name, out.dtype))
    if out.shape != shape:
        raise ValueError("%s must have shape %s, got %s" % (name, shape, out.shape))
    if not out.flags.c_contiguous:
        raise ValueError("%s must be C-contiguous" % name)
    if not out.flags.writeable:
        raise ValueError("%s is read-only" % name)
    return out


def _bytes_arg(s, name):
    if isinstance(s, bytes):
        b = s
    elif isinstance(s, str):
        b = s.encode("utf-8")
    elif hasattr(s, "__fspath__"):
        b = __import__("os").fsencode(s)
    else:
        raise TypeError("%s must be str, bytes or path-like" % name)
    if b"\0" in b:
        raise ValueError("%s contains a NUL byte" % name)
    return b


# ---------------------------------------------------------------------------
# module-level functions


def version():
    """Version string of the loaded library, e.g. "0.1.0"."""
    return _text(_lib.gsink_version_string())


def version_number():
    """MAJOR*10000 + MINOR*100 + PATCH of the loaded library."""
    return _lib.gsink_version_number()


def library_path():
    """Path of the loaded libgsink."""
    return L.path


def status_str(status):
    return _text(_lib.gsink_status_str(_cint(status, "status")))


def last_error():
    """Message of the last failed call on this thread ("" if none)."""
    return _text(_lib.gsink_last_error()) or ""


def device_count(kind=DeviceKind.CPU):
    n = ctypes.c_int(0)
    _check(_lib.gsink_device_count(_enum_arg(kind, DeviceKind, "device kind"), ctypes.byref(n)))
    return n.value


def device_describe(kind=DeviceKind.CPU, index=0):
    buf = ctypes.create_string_buffer(1024)
    _check(_lib.gsink_device_describe(_enum_arg(kind, DeviceKind, "device kind"),
                                      _cint(index, "index"), buf, len(buf)))
    return _text(buf.value)


def max_threads():
    """Largest n_threads a Model accepts (Model(n_threads=...), set_threads):
    2 per CPU this process may run on (its CPU affinity mask). Larger counts
    raise InvalidArgumentError; 0 (the default) means one thread per CPU."""
    return int(_lib.gsink_max_threads())


def presets():
    """Names of the built-in configuration presets."""
    names = []
    i = 0
    while True:
        n = _lib.gsink_config_preset_name(i)
        if n is None:
            return names
        names.append(_text(n))
        i += 1


def default_diag_options():
    """The library's default diagnostic options (gsink_diag_options_init) as a dict."""
    o = L.DiagOptions()
    o.size = L.DiagOptions.known_size
    _lib.gsink_diag_options_init_size(ctypes.byref(o), ctypes.sizeof(o))
    return {f: getattr(o, f) for f in L.field_names(L.DiagOptions)}


def site_name(site):
    n = _lib.gsink_site_name(_cint(site, "site"))
    if n is None:
        raise E.UnknownSiteError("site %r out of range" % (site,), 9)
    return _text(n)


def site_parse(name):
    """(Site, layer) from "resid_out" (layer None) or "blocks.3.hook_resid_post"."""
    s = ctypes.c_int(0)
    layer = ctypes.c_int(-1)
    _check(_lib.gsink_site_parse(_bytes_arg(name, "name"), ctypes.byref(s), ctypes.byref(layer)))
    return Site(s.value), (layer.value if layer.value >= 0 else None)


def _resolve_site(site, layer):
    """(site int, layer int) from a Site, int or name, and an optional layer."""
    if isinstance(site, str):
        s, parsed_layer = site_parse(site)
        if parsed_layer is not None:
            if layer is not None and layer != parsed_layer:
                raise ValueError("site name %r names layer %d but layer=%r was given"
                                 % (site, parsed_layer, layer))
            layer = parsed_layer
        site = int(s)
    else:
        site = _cint(site, "site")
    if layer is None:
        raise TypeError("a layer is needed for site %s" % (site,))
    return site, _cint(layer, "layer")


# ---------------------------------------------------------------------------
# configuration


def _enum_name(fn, v):
    """Name of an enum value from a gsink_*_name function (the int if unknown)."""
    name = fn(int(v))
    return name.decode() if name else int(v)


def _enum_value(fn, v, field):
    """Enum value of a name ("qwen2") or an int."""
    if isinstance(v, str):
        for i in range(64):
            name = fn(i)
            if name is not None and name.decode() == v:
                return i
        raise ValueError("unknown %s %r" % (field, v))
    return v


class Config:
    """Model configuration (gsink_config). Config() starts from the library's
    default ("tiny"); keyword arguments override fields."""

    FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_ff",
              "max_seq_len", "rms_eps", "rope_theta", "tie_embeddings", "init_std",
              "arch", "qkv_bias", "rope_scaling", "rope_factor", "rope_low_freq_factor",
              "rope_high_freq_factor", "rope_original_max_pos", "rope_beta_fast", "rope_beta_slow",
              "rope_attention_factor", "rope_truncate",
              "qk_norm", "rope_dims", "rope_interleaved", "sandwich_norm", "sliding_window")
    # arch and rope_scaling are names ("qwen2", "llama3"); integers are accepted too
    _BOOLS = ("tie_embeddings", "qkv_bias", "rope_truncate", "qk_norm", "rope_interleaved", "sandwich_norm")
    _FLOATS = ("rms_eps", "rope_theta", "init_std", "rope_factor", "rope_low_freq_factor",
               "rope_high_freq_factor", "rope_beta_fast", "rope_beta_slow", "rope_attention_factor")

    def __init__(self, **fields):
        c = L.Config()
        c.size = L.Config.known_size
        _lib.gsink_config_init_size(ctypes.byref(c), ctypes.sizeof(c))
        self._set_from_c(c)
        self.update(**fields)

    @classmethod
    def preset(cls, name, **overrides):
        c = L.Config()
        c.size = L.Config.known_size
        _check(_lib.gsink_config_preset_size(_bytes_arg(name, "name"), ctypes.byref(c), ctypes.sizeof(c)))
        self = cls.__new__(cls)
        self._set_from_c(c)
        self.update(**overrides)
        return self

    @classmethod
    def _from_c(cls, c):
        self = cls.__new__(cls)
        self._set_from_c(c)
        return self

    def _set_from_c(self, c):
        for f in self.FIELDS:
            v = getattr(c, f)
            if f == "arch":
                v = _enum_name(_lib.gsink_arch_name, v)
            elif f == "rope_scaling":
                v = _enum_name(_lib.gsink_rope_scaling_name, v)
            setattr(self, f, bool(v) if f in self._BOOLS else v)

    def update(self, **fields):
        for k, v in fields.items():
            if k not in self.FIELDS:
                raise TypeError("unknown config field %r" % k)
            setattr(self, k, v)
        return self

    def to_c(self):
        c = L.Config()
        c.size = L.Config.known_size
        for f in self.FIELDS:
            v = getattr(self, f)
            if f == "arch":
                v = _enum_value(_lib.gsink_arch_name, v, f)
            elif f == "rope_scaling":
                v = _enum_value(_lib.gsink_rope_scaling_name, v, f)
            if f in self._FLOATS:
                setattr(c, f, float(v))
            else:
                setattr(c, f, _cint(v, f))
        return c

    def validate(self):
        """Raises BadConfigError if the library rejects this configuration."""
        c = self.to_c()
        _check(_lib.gsink_config_validate(ctypes.byref(c)))
        return self

    def to_dict(self):
        return {f: getattr(self, f) for f in self.FIELDS}

    def copy(self, **overrides):
        new = Config.__new__(Config)
        new.__dict__.update(self.__dict__)
        return new.update(**overrides)

    def __eq__(self, other):
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return "Config(%s)" % ", ".join("%s=%r" % kv for kv in self.to_dict().items())


def _as_config(config):
    if config is None:
        return Config()
    if isinstance(config, Config):
        return config
    if isinstance(config, str):
        return Config.preset(config)
    if isinstance(config, dict):
        return Config(**config)
    raise TypeError("config must be a Config, a preset name or a dict")


def _model_options(seed, n_threads, device, device_index, precision=None,
                   discard_site_grads=False, analysis=False, weight_dtype=None,
                   discard_site_activations=False):
    o = L.ModelOptions()
    o.size = L.ModelOptions.known_size
    _lib.gsink_model_options_init_size(ctypes.byref(o), ctypes.sizeof(o))
    o.device = _enum_arg(device, DeviceKind, "device")
    o.device_index = _cint(device_index, "device_index")
    o.n_threads = _cint(n_threads, "n_threads")
    seed = operator.index(seed)
    if not 0 <= seed < 2 ** 64:
        raise OverflowError("seed must be in [0, 2**64)")
    o.seed = seed
    if precision is not None:
        o.precision = _enum_arg(precision, Precision, "precision")
    if discard_site_grads:
        o.flags |= MODEL_DISCARD_SITE_GRADS
    if analysis:
        o.flags |= MODEL_ANALYSIS
    if discard_site_activations:
        o.flags |= MODEL_DISCARD_SITE_ACTIVATIONS
    if weight_dtype is not None:
        o.weight_dtype = _enum_arg(weight_dtype, WeightDtype, "weight_dtype")
    return o


# ---------------------------------------------------------------------------
# handles


def _locked(fn):
    """Runs a handle method with the handle's locks held (see _Handle)."""
    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        locks = self._locks
        for lk in locks:
            lk.acquire()
        try:
            return fn(self, *args, **kwargs)
        finally:
            for lk in reversed(locks):
                lk.release()
    return call


_UNLOCKED = frozenset(("__new__", "__init__", "__del__", "__init_subclass__", "__repr__",
                       "_handle", "_ok"))


def _serialise(cls):
    """Wraps every method and property of cls defined in its body in _locked."""
    for name, v in list(vars(cls).items()):
        if name in _UNLOCKED:
            continue
        if isinstance(v, property):
            setattr(cls, name, property(v.fget and _locked(v.fget), v.fset and _locked(v.fset),
                                        v.fdel and _locked(v.fdel), v.__doc__))
        elif callable(v) and not isinstance(v, (staticmethod, classmethod, type)):
            setattr(cls, name, _locked(v))


class _Handle:
    """Owns one C handle; close() frees it once, use after close raises.

    A C handle must be used by one thread at a time (the library answers a
    second thread with GSINK_ERR_BUSY). Each Python handle therefore holds a
    threading.RLock, and every method and property runs with it held, so
    calls from several Python threads on one object are serialised, and
    close() waits for a call in progress. An Optimizer takes its model's lock
    first, then its own (the C optimizer works on the model's memory)."""

    _free_fn = None
    _errmsg_fn = None
    _kind = "handle"
    _h = None

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self._lock = threading.RLock()
        self._locks = (self._lock,)
        return self

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _serialise(cls)

    def _handle(self):
        h = self._h
        if h is None:
            raise E.ClosedError("%s is closed" % self._kind)
        return h

    def _ok(self, status):
        if status != 0:
            msg = ""
            if self._h is not None:
                msg = _text(type(self)._errmsg_fn(self._h)) or ""
            if not msg:
                msg = _text(_lib.gsink_last_error()) or ""
            _raise(status, msg)

    @property
    def closed(self):
        return self._h is None

    def close(self):
        h, self._h = self._h, None
        if h is not None:
            type(self)._free_fn(h)

    def __enter__(self):
        self._handle()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone
            pass


_serialise(_Handle)


class Model(_Handle):
    """A Llama-style model (gsink_model).

    Model(config=None, *, seed=0, n_threads=0, device="cpu", device_index=0,
    precision=None, discard_site_grads=False, analysis=False, weight_dtype=None,
    discard_site_activations=False, **overrides): config
    is a Config, a preset
    name, a dict or None (the default "tiny" config); keyword overrides change config
    fields. precision is "fp32" (default), "tf32" or "bf16" (or a Precision): tensor-core
    matrix products with fp32 accumulation and fp32 storage, CUDA only (the CPU raises
    UnsupportedError). discard_site_grads=True keeps no per-layer site gradients (about
    half the activation memory of training; gradient diagnostics then raise).
    analysis=True computes activation gradients only: no parameter-gradient buffer,
    no weight gradients in backward(), bitwise the same diagnostics; get_param_grad,
    zero_grad, backward(accumulate=True) and Optimizer then raise UnsupportedError.
    discard_site_activations=True (only with analysis=True, else InvalidArgumentError):
    attn_out and mlp_out (never read by the activation-gradient backward) share one
    buffer across layers; Analysis reports are unchanged, activation() and the
    activation diagnostics of those two sites raise UnsupportedError.
    Every model stores attn_norm_out, mlp_norm_out and mlp_post (and the gradients of
    mlp_pre and mlp_up) once and recomputes a layer's values when they are read
    (bitwise the forward's and backward's), shares v's storage for
    v_scaled while V-scale is off, and writes the logit gradients over the logits:
    logits() after backward() recomputes them (bitwise), unless an Optimizer stepped
    since the forward (CallOrderError; read them before backward()).
    weight_dtype is "fp32" (default), "bf16" or "fp16" (or a WeightDtype): the storage of
    the weight matrices (half the weight memory in 16 bits); compute, activations and
    gradients stay fp32, get_param/set_param stay float32 (set_param rounds to nearest
    even), and an Optimizer keeps fp32 master weights.
    n_threads: 0 = one CPU thread per CPU this process may run on, at most
    max_threads() (2 per CPU; more raises InvalidArgumentError)."""

    _free_fn = staticmethod(_lib.gsink_model_free)
    _errmsg_fn = staticmethod(_lib.gsink_model_errmsg)
    _kind = "model"

    def __init__(self, config=None, *, seed=0, n_threads=0, device="cpu", device_index=0,
                 precision=None, discard_site_grads=False, analysis=False, weight_dtype=None,
                 discard_site_activations=False, **overrides):
        self._dependents = weakref.WeakSet()
        cfg = _as_config(config)
        if overrides:
            cfg = cfg.copy(**overrides)
        c = cfg.to_c()
        o = _model_options(seed, n_threads, device, device_index, precision, discard_site_grads,
                           analysis, weight_dtype, discard_site_activations)
        h = ctypes.c_void_p()
        _check(_lib.gsink_model_create(ctypes.byref(c), ctypes.byref(o), ctypes.byref(h)))
        self._adopt(h.value)

    @classmethod
    def load(cls, path, *, seed=0, n_threads=0, device="cpu", device_index=0, precision=None,
             discard_site_grads=False, analysis=False, weight_dtype=None,
             discard_site_activations=False):
        """Loads a HF directory / .safetensors (with config.json) / .gguf.
        analysis=True: activation gradients only; discard_site_activations=True: unread
        site activations shared across layers (see Model); weight_dtype: storage of the weight
        matrices, a BF16/F16 safetensors tensor loads bit for bit into the same type
        (see Model)."""
        o = _model_options(seed, n_threads, device, device_index, precision, discard_site_grads,
                           analysis, weight_dtype, discard_site_activations)
        h = ctypes.c_void_p()
        _check(_lib.gsink_model_load(_bytes_arg(path, "path"), ctypes.byref(o), ctypes.byref(h)))
        self = cls.__new__(cls)
        self._dependents = weakref.WeakSet()
        self._adopt(h.value)
        return self

    def _adopt(self, h):
        self._h = h
        self._pinfo = None
        self._refresh_config()

    def _refresh_config(self):
        c = L.Config()
        c.size = L.Config.known_size
        self._ok(_lib.gsink_model_config(self._handle(), ctypes.byref(c)))
        self._config = Config._from_c(c)

    def close(self):
        """Frees the model (and any optimizer created on it). Idempotent."""
        deps = getattr(self, "_dependents", None)
        if deps is not None:
            for d in list(deps):
                d.close()
        super().close()

    # -- basics ------------------------------------------------------------

    @property
    def config(self):
        self._handle()
        return self._config.copy()

    @property
    def errmsg(self):
        return _text(_lib.gsink_model_errmsg(self._handle())) or ""

    def set_threads(self, n_threads):
        """CPU threads of this model: 0 = one per CPU this process may run on,
        1..max_threads(); anything else raises InvalidArgumentError and keeps
        the current count."""
        self._ok(_lib.gsink_model_set_threads(self._handle(), _cint(n_threads, "n_threads")))

    def memory(self, reset_peak=False):
        """(bytes, peak_bytes) of the buffers the model's backend holds: device
        memory on CUDA (weights, gradients, activations, statistics, optimizer
        state, scratch), host memory on the CPU. reset_peak=True restarts the
        peak from the current bytes after reading."""
        b, p = L.c_uint64(), L.c_uint64()
        self._ok(_lib.gsink_model_memory(self._handle(), ctypes.byref(b), ctypes.byref(p),
                                         MEMORY_RESET_PEAK if reset_peak else 0))
        return b.value, p.value

    def save(self, directory):
        """Writes directory/model.safetensors + config.json (HF layout)."""
        self._ok(_lib.gsink_model_save(self._handle(), _bytes_arg(directory, "directory")))

    # -- parameters --------------------------------------------------------

    def param_info(self):
        """[(name, shape)] of every parameter tensor, in HF order."""
        h = self._handle()
        if self._pinfo is not None:
            return list(self._pinfo)
        n = ctypes.c_size_t(0)
        self._ok(_lib.gsink_param_count(h, ctypes.byref(n)))
        out = []
        name = ctypes.c_char_p()
        ndim = ctypes.c_int(0)
        dims = (ctypes.c_int64 * 2)()
        for i in range(n.value):
            self._ok(_lib.gsink_param_info(h, i, ctypes.byref(name), ctypes.byref(ndim), dims))
            out.append((_text(name.value), tuple(int(dims[j]) for j in range(ndim.value))))
        self._pinfo = out
        self._pshape = dict(out)
        return list(out)

    def param_names(self):
        return [n for n, _ in self.param_info()]

    @property
    def num_params(self):
        n = ctypes.c_size_t(0)
        self._ok(_lib.gsink_param_numel(self._handle(), ctypes.byref(n)))
        return n.value

    def _param_shape(self, name):
        if self._pinfo is None:
            self.param_info()
        shape = self._pshape.get(name)
        if shape is not None:
            return shape
        raise E.UnknownNameError("unknown parameter %r" % (name,), 10)

    def get_param(self, name, out=None):
        """Copy of a parameter by HF name (float32 numpy array)."""
        h = self._handle()
        arr = _out_array(out, self._param_shape(name))
        self._ok(_lib.gsink_get_param(h, _bytes_arg(name, "name"), arr.ctypes.data, arr.size))
        return arr

    def set_param(self, name, data):
        h = self._handle()
        arr = _float_input(data, "data", self._param_shape(name))
        self._ok(_lib.gsink_set_param(h, _bytes_arg(name, "name"), arr.ctypes.data, arr.size))

    def get_param_grad(self, name, out=None):
        h = self._handle()
        arr = _out_array(out, self._param_shape(name))
        self._ok(_lib.gsink_get_param_grad(h, _bytes_arg(name, "name"), arr.ctypes.data,
                                           arr.size))
        return arr

    def get_params_flat(self, out=None):
        """Every parameter in one flat float32 array of num_params values
        (param_info order, theta last): gsink_get_params_flat."""
        h = self._handle()
        arr = _out_array(out, (self.num_params,))
        self._ok(_lib.gsink_get_params_flat(h, arr.ctypes.data, arr.size))
        return arr

    def set_params_flat(self, data):
        h = self._handle()
        arr = _float_input(data, "data", (self.num_params,))
        self._ok(_lib.gsink_set_params_flat(h, arr.ctypes.data, arr.size))

    def get_grads_flat(self, out=None):
        """Every accumulated gradient in one flat array (layout of get_params_flat)."""
        h = self._handle()
        arr = _out_array(out, (self.num_params,))
        self._ok(_lib.gsink_get_grads_flat(h, arr.ctypes.data, arr.size))
        return arr

    def set_grads_flat(self, data):
        """Replaces the accumulated gradients the next optimizer step reads."""
        h = self._handle()
        arr = _float_input(data, "data", (self.num_params,))
        self._ok(_lib.gsink_set_grads_flat(h, arr.ctypes.data, arr.size))

    def params(self):
        """{name: array} copies of every parameter."""
        return {n: self.get_param(n) for n, _ in self.param_info()}

    def grads(self):
        """{name: array} copies of every accumulated parameter gradient."""
        return {n: self.get_param_grad(n) for n, _ in self.param_info()}

    # -- forward / backward ------------------------------------------------

    def forward(self, tokens, targets=None):
        """Runs the model on tokens (batch, seq_len) or (seq_len,); returns the
        mean cross-entropy loss if targets (same shape, < 0 ignored) are given,
        else None."""
        h = self._handle()
        tok = _tokens_array(tokens, "tokens")
        if targets is None:
            st = _lib.gsink_forward(h, tok.ctypes.data, None, tok.shape[0], tok.shape[1], None)
            self._ok(st)
            return None
        tgt = _tokens_array(targets, "targets")
        if tgt.shape != tok.shape:
            raise ValueError("targets shape %s differs from tokens shape %s"
                             % (tgt.shape, tok.shape))
        loss = ctypes.c_float(0.0)
        st = _lib.gsink_forward(h, tok.ctypes.data, tgt.ctypes.data, tok.shape[0], tok.shape[1],
                                ctypes.byref(loss))
        self._ok(st)
        return loss.value

    def backward(self, accumulate=False):
        """Exact gradients of the last forward's loss; accumulate=True adds to
        the parameter gradients instead of overwriting them."""
        self._ok(_lib.gsink_backward(self._handle(), BACKWARD_ACCUMULATE if accumulate else 0))

    def zero_grad(self):
        self._ok(_lib.gsink_zero_grad(self._handle()))

    @property
    def last_shape(self):
        """(batch, seq_len) of the last forward ((0, 0) if none)."""
        b = ctypes.c_int(0)
        t = ctypes.c_int(0)
        self._ok(_lib.gsink_last_shape(self._handle(), ctypes.byref(b), ctypes.byref(t)))
        return b.value, t.value

    def _seq_len(self):
        return self.last_shape[1]

    def logits(self, out=None):
        """Logits of the last forward, (batch, seq_len, vocab)."""
        h = self._handle()
        b, t = self.last_shape
        arr = _out_array(out, (b, t, self._config.vocab_size))
        self._ok(_lib.gsink_get_logits(h, arr.ctypes.data, arr.size))
        return arr

    # -- sites -------------------------------------------------------------

    def site_dims(self, site):
        """(heads, width per head) of a site for this model; a position holds
        heads * width values (heads is 1 for sites that are not per head)."""
        s = site if not isinstance(site, str) else site_parse(site)[0]
        heads = ctypes.c_int(0)
        width = ctypes.c_int(0)
        self._ok(_lib.gsink_site_dims(self._handle(), _cint(s, "site"), ctypes.byref(heads),
                                      ctypes.byref(width)))
        return heads.value, width.value

    def _site_tensor(self, fn, site, layer, out):
        h = self._handle()
        s, l = _resolve_site(site, layer)
        heads, width = self.site_dims(s)
        b, t = self.last_shape
        arr = _out_array(out, (b, t, heads * width))
        self._ok(fn(h, l, s, arr.ctypes.data, arr.size))
        return arr

    def activation(self, site, layer=None, out=None):
        """Raw activation of a site, (batch, seq_len, width). site is a Site,
        an int or a name ("q", "blocks.2.hook_resid_post")."""
        return self._site_tensor(_lib.gsink_get_activation, site, layer, out)

    def gradient(self, site, layer=None, out=None):
        """Raw gradient dL/dx of a site, (batch, seq_len, width)."""
        return self._site_tensor(_lib.gsink_get_gradient, site, layer, out)

    def activation_norms(self, site, layer=None, head=ALL_HEADS):
        """Token-wise activation norms (seq_len,), batch mean."""
        h = self._handle()
        s, l = _resolve_site(site, layer)
        arr = np.empty(self._seq_len(), dtype=np.float32)
        self._ok(_lib.gsink_get_activation_norms(h, l, s, _cint(head, "head"), arr.ctypes.data,
                                                 arr.size))
        return arr

    def gradient_norms(self, site, layer=None, head=ALL_HEADS, agg=None):
        """Token-wise gradient norms (seq_len,), batch-aggregated with agg
        (BatchAgg; default: the model's diag option)."""
        h = self._handle()
        s, l = _resolve_site(site, layer)
        arr = np.empty(self._seq_len(), dtype=np.float32)
        self._ok(_lib.gsink_get_gradient_norms(h, l, s, _cint(head, "head"), self._agg(agg),
                                               arr.ctypes.data, arr.size))
        return arr

    # -- diagnostics -------------------------------------------------------

    def _diag_c(self):
        o = L.DiagOptions()
        o.size = L.DiagOptions.known_size
        self._ok(_lib.gsink_get_diag_options(self._handle(), ctypes.byref(o)))
        return o

    def _agg(self, agg):
        if agg is None:
            return self._diag_c().batch_agg
        return _enum_arg(agg, BatchAgg, "agg")

    @property
    def diag_options(self):
        """Diagnostic defaults as a dict (sink_eps, sink_window, rgs_window,
        sink_position, batch_agg)."""
        o = self._diag_c()
        return {f: getattr(o, f) for f in L.field_names(L.DiagOptions)}

    def set_diag_options(self, **kw):
        """Changes some diagnostic defaults (see diag_options)."""
        o = self._diag_c()
        for k, v in kw.items():
            if k not in L.field_names(L.DiagOptions):
                raise TypeError("unknown diag option %r" % k)
            if k == "sink_eps":
                o.sink_eps = float(v)
            elif k == "batch_agg":
                o.batch_agg = _enum_arg(v, BatchAgg, "batch_agg")
            else:
                setattr(o, k, _cint(v, k))
        self._ok(_lib.gsink_set_diag_options(self._handle(), ctypes.byref(o)))

    def column_mass(self, layer, head):
        """(M, S): column mass and second moment per key position (seq_len,)."""
        h = self._handle()
        t = self._seq_len()
        m = np.empty(t, dtype=np.float32)
        s = np.empty(t, dtype=np.float32)
        self._ok(_lib.gsink_attention_column_mass(h, _cint(layer, "layer"), _cint(head, "head"),
                                                  m.ctypes.data, s.ctypes.data, t))
        return m, s

    def sink_scores(self, layer, s=None):
        """alpha_s^h for every head of a layer, (n_heads,)."""
        h = self._handle()
        if s is None:
            s = self._diag_c().sink_position
        arr = np.empty(self._config.n_heads, dtype=np.float32)
        self._ok(_lib.gsink_sink_scores(h, _cint(layer, "layer"), _cint(s, "s"), arr.ctypes.data,
                                        arr.size))
        return arr

    def sink_rate(self, layer, s=None, eps=None):
        o = self._diag_c()
        s = o.sink_position if s is None else s
        eps = o.sink_eps if eps is None else eps
        r = ctypes.c_float(0.0)
        self._ok(_lib.gsink_sink_rate(self._handle(), _cint(layer, "layer"), _cint(s, "s"),
                                      float(eps), ctypes.byref(r)))
        return r.value

    def attention_pattern(self, layer, head, batch_index=0):
        """Attention matrix a_tj (seq_len, seq_len) of one sequence and head."""
        h = self._handle()
        t = self._seq_len()
        arr = np.empty((t, t), dtype=np.float32)
        self._ok(_lib.gsink_attention_pattern(h, _cint(layer, "layer"),
                                              _cint(batch_index, "batch_index"),
                                              _cint(head, "head"), arr.ctypes.data, arr.size))
        return arr

    def gradient_sink_ratio(self, layer, s=None, t_e=None, agg=None):
        o = self._diag_c()
        s = o.sink_position if s is None else s
        t_e = o.rgs_window if t_e is None else t_e
        agg = o.batch_agg if agg is None else _enum_arg(agg, BatchAgg, "agg")
        r = ctypes.c_float(0.0)
        self._ok(_lib.gsink_gradient_sink_ratio(self._handle(), _cint(layer, "layer"),
                                                _cint(s, "s"), _cint(t_e, "t_e"), agg,
                                                ctypes.byref(r)))
        return r.value

    def branch_ratios(self, layer, branch=Branch.ATTN, agg=None):
        """{"bloat", "change", "compress"}: per-token arrays (seq_len,)."""
        h = self._handle()
        t = self._seq_len()
        out = {k: np.empty(t, dtype=np.float32) for k in ("bloat", "change", "compress")}
        self._ok(_lib.gsink_branch_ratios(h, _cint(layer, "layer"),
                                          _enum_arg(branch, Branch, "branch"), self._agg(agg),
                                          out["bloat"].ctypes.data, out["change"].ctypes.data,
                                          out["compress"].ctypes.data, t))
        return out

    def massive_activation_ratio(self, site, layer=None):
        s, l = _resolve_site(site, layer)
        r = ctypes.c_float(0.0)
        self._ok(_lib.gsink_massive_activation_ratio(self._handle(), l, s, ctypes.byref(r)))
        return r.value

    def qkv_gradient_split(self, layer, agg=None):
        """{"q", "k", "v"}: token-wise norms of the Q/K/V parts of dL/d attn_norm_out."""
        h = self._handle()
        t = self._seq_len()
        out = {k: np.empty(t, dtype=np.float32) for k in ("q", "k", "v")}
        self._ok(_lib.gsink_qkv_gradient_split(h, _cint(layer, "layer"), self._agg(agg),
                                               out["q"].ctypes.data, out["k"].ctypes.data,
                                               out["v"].ctypes.data, t))
        return out

    def _diag_with(self, overrides):
        """The model's diag options with keyword overrides (a DiagOptions)."""
        return _diag_apply(self._diag_c(), overrides)

    def report_json(self, **diag_overrides):
        """The "gsink.report/1" JSON report as a string (needs forward and
        backward). Keyword arguments override diag options for this report."""
        h = self._handle()
        opts = None
        if diag_overrides:
            opts = ctypes.byref(self._diag_with(diag_overrides))
        p = ctypes.c_void_p()
        self._ok(_lib.gsink_report_json(h, opts, ctypes.byref(p)))
        return _take_string(p)

    def report(self, **diag_overrides):
        """The JSON report parsed into a dict."""
        return json.loads(self.report_json(**diag_overrides))

    def analyze(self, tokens, micro_batch=1, progress=None, **diag_overrides):
        """Streaming diagnostics of a whole batch (gsink_analyze_sequences):
        tokens (n_seq, seq_len) run as micro-batches of micro_batch sequences
        with next-token targets within each sequence; returns the parsed
        gsink.report/1 dict, equal to report() after one forward and backward
        of all sequences at once (input.sequences, input.micro_batches added).
        progress(done, total) is called after each micro-batch; a true return
        value stops the run with CancelledError (an exception it raises stops
        it too and is re-raised). Keyword arguments override diag options."""
        h = self._handle()
        tok = _tokens_array(tokens, "tokens")
        o = self._diag_with(diag_overrides)
        err = []

        def cb(done, total, _user):
            try:
                return 1 if progress(done, total) else 0
            except BaseException as e:  # noqa: B902 -- re-raised below
                err.append(e)
                return 1

        fn = L.PROGRESS_FN(cb) if progress is not None else None
        p = ctypes.c_void_p()
        st = _lib.gsink_analyze_sequences(h, tok.ctypes.data, _cint(tok.shape[0], "n_seq"),
                                          _cint(tok.shape[1], "seq_len"), _cint(micro_batch, "micro_batch"),
                                          ctypes.byref(o), ctypes.cast(fn, ctypes.c_void_p) if fn else None,
                                          None, ctypes.byref(p))
        if err:
            raise err[0]
        self._ok(st)
        return json.loads(_take_string(p))

    # -- V-scale -----------------------------------------------------------

    def vscale_enable(self, mode=VScaleMode.FULL, sigma=None, learnable_theta=None,
                      per_query_head=None):
        """Turns V-scale on ("full", "backward_only") or off ("off")."""
        o = L.VScaleOptions()
        o.size = L.VScaleOptions.known_size
        _lib.gsink_vscale_options_init_size(ctypes.byref(o), ctypes.sizeof(o))
        o.mode = _enum_arg(mode, VScaleMode, "mode")
        if sigma is not None:
            o.sigma = float(sigma)
        if learnable_theta is not None:
            o.learnable_theta = 1 if learnable_theta else 0
        if per_query_head is not None:
            o.per_query_head = 1 if per_query_head else 0
        self._pinfo = None  # theta tensors join or leave the registry
        self._ok(_lib.gsink_vscale_enable(self._handle(), ctypes.byref(o)))

    def vscale_disable(self):
        self.vscale_enable(VScaleMode.OFF)

    @property
    def vscale(self):
        """Current V-scale settings as a dict (mode is a VScaleMode)."""
        o = L.VScaleOptions()
        o.size = L.VScaleOptions.known_size
        self._ok(_lib.gsink_vscale_get(self._handle(), ctypes.byref(o)))
        return {"mode": VScaleMode(o.mode), "sigma": o.sigma,
                "learnable_theta": bool(o.learnable_theta),
                "per_query_head": bool(o.per_query_head)}

    def _theta_shape(self):
        n = ctypes.c_size_t(0)
        self._ok(_lib.gsink_vscale_theta_count(self._handle(), ctypes.byref(n)))
        L_ = self._config.n_layers
        return (L_, n.value // L_) if n.value else (L_, 0)

    @property
    def theta(self):
        """V-scale theta, (n_layers, n_scale_heads); empty when off."""
        h = self._handle()
        arr = np.empty(self._theta_shape(), dtype=np.float32)
        if arr.size == 0:
            return arr
        self._ok(_lib.gsink_vscale_get_theta(h, arr.ctypes.data, arr.size))
        return arr

    @theta.setter
    def theta(self, data):
        h = self._handle()
        arr = _float_input(data, "theta", self._theta_shape())
        self._ok(_lib.gsink_vscale_set_theta(h, arr.ctypes.data, arr.size))

    def theta_grad(self):
        h = self._handle()
        arr = np.empty(self._theta_shape(), dtype=np.float32)
        self._ok(_lib.gsink_vscale_get_theta_grad(h, arr.ctypes.data, arr.size))
        return arr

    def optimizer(self, **options):
        """Shortcut for Optimizer(self, **options)."""
        return Optimizer(self, **options)

    def __repr__(self):
        if self._h is None:
            return "<gsink.Model closed>"
        c = self._config
        return "<gsink.Model L%d d%d H%d KV%d V%d>" % (c.n_layers, c.d_model, c.n_heads,
                                                      c.n_kv_heads, c.vocab_size)


def _diag_apply(o, overrides):
    """Keyword overrides applied to a DiagOptions (changed in place, returned)."""
    for k, v in overrides.items():
        if k not in L.field_names(L.DiagOptions):
            raise TypeError("unknown diag option %r" % k)
        if k == "sink_eps":
            o.sink_eps = float(v)
        elif k == "batch_agg":
            o.batch_agg = _enum_arg(v, BatchAgg, "batch_agg")
        else:
            setattr(o, k, _cint(v, k))
    return o


class Analysis(_Handle):
    """Streaming diagnostics over micro-batches (gsink_analysis_*).

    Analysis(model, seq_len, **diag_options): add() micro-batches of shape
    (batch, seq_len), then report() gives the gsink.report/1 dict of all of
    them, equal to the report of one forward and backward of the whole batch.
    Only sums are kept across micro-batches (memory independent of their
    number). state() / set_state() expose the sums as one float64 array: the
    element-wise sum of several handles' states (same model, options and
    seq_len), set into one handle, gives the report of the union of their
    micro-batches (e.g. an MPI all-reduce). Closing the model closes it."""

    _free_fn = staticmethod(_lib.gsink_analysis_free)
    _errmsg_fn = staticmethod(_lib.gsink_analysis_errmsg)
    _kind = "analysis"

    def __init__(self, model, seq_len, **diag_options):
        if not isinstance(model, Model):
            raise TypeError("model must be a gsink.Model")
        h = ctypes.c_void_p()
        with model._lock:
            o = model._diag_with(diag_options)
            st = _lib.gsink_analysis_begin(model._handle(), _cint(seq_len, "seq_len"), ctypes.byref(o),
                                           ctypes.byref(h))
            if st != 0:
                model._ok(st)
            self._h = h.value
            self._opts = o
            self.model = model
            self.seq_len = int(seq_len)
            self._locks = (model._lock, self._lock)
            model._dependents.add(self)

    def add(self, tokens, targets=None):
        """Forward + backward of one micro-batch (batch, seq_len); targets
        (same shape, < 0 ignored) default to the next token of each sequence."""
        tok = _tokens_array(tokens, "tokens")
        tgt = None
        if targets is not None:
            tgt = _tokens_array(targets, "targets")
            if tgt.shape != tok.shape:
                raise ValueError("targets shape %s differs from tokens shape %s" % (tgt.shape, tok.shape))
        self._ok(_lib.gsink_analysis_add(self._handle(), tok.ctypes.data,
                                         tgt.ctypes.data if tgt is not None else None,
                                         _cint(tok.shape[0], "batch"), _cint(tok.shape[1], "seq_len")))

    def finish(self):
        """No more micro-batches: add() then raises CallOrderError."""
        self._ok(_lib.gsink_analysis_finish(self._handle()))

    def report_json(self, **diag_overrides):
        """The gsink.report/1 JSON text of the micro-batches so far."""
        h = self._handle()
        opts = None
        if diag_overrides:
            o = L.DiagOptions()
            ctypes.pointer(o)[0] = self._opts
            opts = ctypes.byref(_diag_apply(o, diag_overrides))
        p = ctypes.c_void_p()
        self._ok(_lib.gsink_analysis_report_json(h, opts, ctypes.byref(p)))
        return _take_string(p)

    def report(self, **diag_overrides):
        """The report parsed into a dict."""
        return json.loads(self.report_json(**diag_overrides))

    def gradient_norms(self, layer, site, head=ALL_HEADS, agg=BatchAgg.SUM_THEN_NORM):
        """Gradient-norm profile of a site over the batch: seq_len values for
        attn_norm_out (Figure 1, R_GS), min(seq_len, 64) for other sites."""
        h = self._handle()
        n = ctypes.c_size_t(0)
        s = _enum_arg(site, Site, "site")
        args = (_cint(layer, "layer"), s, _cint(head, "head"), _enum_arg(agg, BatchAgg, "agg"))
        self._ok(_lib.gsink_analysis_gradient_norms(h, *args, None, 0, ctypes.byref(n)))
        out = np.empty(n.value, dtype=np.float32)
        self._ok(_lib.gsink_analysis_gradient_norms(h, *args, out.ctypes.data, out.size, ctypes.byref(n)))
        return out

    @property
    def counts(self):
        """{"sequences", "micro_batches", "n_targets"} added so far."""
        v = [ctypes.c_int64(0) for _ in range(3)]
        self._ok(_lib.gsink_analysis_counts(self._handle(), *(ctypes.byref(x) for x in v)))
        return dict(zip(("sequences", "micro_batches", "n_targets"), (x.value for x in v)))

    @property
    def memory(self):
        """{"state_bytes", "temp_bytes"}: the sums (fixed) and the largest
        per-micro-batch temporaries so far."""
        a, b = ctypes.c_uint64(0), ctypes.c_uint64(0)
        self._ok(_lib.gsink_analysis_memory(self._handle(), ctypes.byref(a), ctypes.byref(b)))
        return {"state_bytes": a.value, "temp_bytes": b.value}

    def state(self):
        """The sums as a float64 array (a copy)."""
        h = self._handle()
        n = ctypes.c_size_t(0)
        self._ok(_lib.gsink_analysis_state_size(h, ctypes.byref(n)))
        out = np.empty(n.value, dtype=np.float64)
        self._ok(_lib.gsink_analysis_get_state(h, out.ctypes.data, out.size))
        return out

    def set_state(self, state):
        """Replaces the sums (e.g. by the sum of several handles' states)."""
        a = np.ascontiguousarray(state, dtype=np.float64).reshape(-1)
        self._ok(_lib.gsink_analysis_set_state(self._handle(), a.ctypes.data, a.size))

    @property
    def errmsg(self):
        return _text(_lib.gsink_analysis_errmsg(self._handle())) or ""


class Optimizer(_Handle):
    """AdamW + clipping + cosine schedule on a model's parameters.

    Optimizer(model, lr=3e-4, min_lr=3e-5, warmup_steps=0, total_steps=0,
    beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0,
    accumulation_steps=1) -- unspecified options keep the library defaults.
    Closing the model closes its optimizers first."""

    _free_fn = staticmethod(_lib.gsink_optimizer_free)
    _errmsg_fn = staticmethod(_lib.gsink_optimizer_errmsg)
    _kind = "optimizer"

    _INT_FIELDS = ("warmup_steps", "total_steps", "accumulation_steps")

    def __init__(self, model, **options):
        if not isinstance(model, Model):
            raise TypeError("model must be a gsink.Model")
        o = L.OptimizerOptions()
        o.size = L.OptimizerOptions.known_size
        _lib.gsink_optimizer_options_init_size(ctypes.byref(o), ctypes.sizeof(o))
        fields = L.field_names(L.OptimizerOptions)
        for k, v in options.items():
            if k not in fields:
                raise TypeError("unknown optimizer option %r" % k)
            setattr(o, k, _cint(v, k) if k in self._INT_FIELDS else float(v))
        self.options = {f: getattr(o, f) for f in fields}
        h = ctypes.c_void_p()
        with model._lock:
            mh = model._handle()
            st = _lib.gsink_optimizer_create(mh, ctypes.byref(o), ctypes.byref(h))
            if st != 0:
                model._ok(st)
            self._h = h.value
            self.model = model
            self._locks = (model._lock, self._lock)
            model._dependents.add(self)

    def step(self):
        """One AdamW update; returns the pre-clip global gradient norm."""
        gn = ctypes.c_float(0.0)
        self._ok(_lib.gsink_optimizer_step(self._handle(), ctypes.byref(gn)))
        return gn.value

    def lr_at(self, step):
        return _lib.gsink_optimizer_lr_at(self._handle(), int(step))

    def save(self, path):
        """Writes the optimizer state (step, AdamW moments) atomically to path."""
        self._ok(_lib.gsink_optimizer_save(self._handle(), _bytes_arg(path, "path")))

    def load(self, path):
        """Restores a state written by save(); verified before anything changes."""
        self._ok(_lib.gsink_optimizer_load(self._handle(), _bytes_arg(path, "path")))

    @property
    def step_count(self):
        return _lib.gsink_optimizer_step_count(self._handle())

    @property
    def errmsg(self):
        return _text(_lib.gsink_optimizer_errmsg(self._handle())) or ""


class Tokenizer(_Handle):
    """BPE tokenizer: GPT-2 style byte-level from a GGUF file's metadata or a
    HuggingFace tokenizer.json, or SentencePiece-style (Llama 2, Mistral)
    from a tokenizer.json. Tokenizer(path) reads a directory or a *.json file
    as tokenizer.json, anything else as GGUF."""

    _free_fn = staticmethod(_lib.gsink_tokenizer_free)
    _errmsg_fn = staticmethod(_lib.gsink_tokenizer_errmsg)
    _kind = "tokenizer"

    def __init__(self, path, kind=None):
        import os
        p = os.fspath(path) if isinstance(path, os.PathLike) else path
        if kind is None:
            name = p.decode() if isinstance(p, bytes) else p
            kind = "json" if isinstance(name, str) and (os.path.isdir(name) or
                                                         name.endswith(".json")) else "gguf"
        if kind not in ("json", "gguf"):
            raise ValueError("kind must be 'json', 'gguf' or None")
        load = _lib.gsink_tokenizer_load_json if kind == "json" else _lib.gsink_tokenizer_load_gguf
        h = ctypes.c_void_p()
        _check(load(_bytes_arg(p, "path"), ctypes.byref(h)))
        self._h = h.value

    @classmethod
    def load_gguf(cls, path):
        return cls(path, kind="gguf")

    @classmethod
    def from_json(cls, path):
        """From a HuggingFace tokenizer.json (the file or its directory)."""
        return cls(path, kind="json")

    load_json = from_json

    def token_id(self, text):
        """Id of the token whose vocabulary text is `text` (e.g.
        "<|endoftext|>"), None if there is none."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        i = ctypes.c_int32(-1)
        st = _lib.gsink_tokenizer_token_id(self._handle(), data, ctypes.byref(i))
        if st == 10:  # GSINK_ERR_UNKNOWN_NAME
            return None
        self._ok(st)
        return i.value

    @property
    def vocab_size(self):
        n = ctypes.c_int32(0)
        self._ok(_lib.gsink_tokenizer_vocab_size(self._handle(), ctypes.byref(n)))
        return n.value

    @property
    def special(self):
        """(bos, eos) token ids, None where the vocabulary has none."""
        b = ctypes.c_int32(-1)
        e = ctypes.c_int32(-1)
        self._ok(_lib.gsink_tokenizer_special(self._handle(), ctypes.byref(b), ctypes.byref(e)))
        return (b.value if b.value >= 0 else None, e.value if e.value >= 0 else None)

    def encode(self, text, add_bos=False, parse_special=False):
        """Token ids of a str (UTF-8) or bytes, as an int32 array."""
        h = self._handle()
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        flags = (ENCODE_ADD_BOS if add_bos else 0) | (ENCODE_PARSE_SPECIAL if parse_special else 0)
        cap = len(data) + 2
        n = ctypes.c_size_t(0)
        for _ in range(2):
            ids = np.empty(max(cap, 1), dtype=np.int32)
            st = _lib.gsink_tokenizer_encode(h, data, len(data), flags, ids.ctypes.data, cap,
                                             ctypes.byref(n))
            if st == 12 and n.value > cap:  # buffer too small: retry at the size asked
                cap = n.value
                continue
            self._ok(st)
            return ids[:n.value].copy() if n.value != ids.size else ids
        self._ok(st)
        return ids[:n.value]

    def decode(self, ids):
        """UTF-8 text of token ids (invalid UTF-8 is replaced)."""
        h = self._handle()
        arr = np.asarray(ids)
        if arr.size == 0:  # np.asarray([]) is float64; an empty list decodes to ""
            arr = np.empty(0, dtype=np.int32)
        if arr.ndim != 1:
            arr = arr.reshape(-1)
        arr = _tokens_array(arr, "ids").reshape(-1)
        size = 16 * arr.size + 16
        n = ctypes.c_size_t(0)
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            st = _lib.gsink_tokenizer_decode(h, arr.ctypes.data, arr.size, buf, size,
                                             ctypes.byref(n))
            if st == 12 and n.value + 1 > size:
                size = n.value + 1
                continue
            self._ok(st)
            return buf.raw[:n.value].decode("utf-8", "replace")
        self._ok(st)
        return ""


# ---- embedding: operations on caller buffers, metrics on caller tensors -----
# A thin numpy layer over gsink_ops_* and gsink_metric_* (docs/embedding.md):
# host arrays in, new arrays out. Attention tensors are (batch, seq, heads,
# d_head); lse and the column statistics (batch, n_heads, seq).


def _attn_desc(q, k, v, softmax_scale, sink_window):
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim != 4:
            raise ValueError("%s must have shape (batch, seq, heads, d_head), got %s" % (name, a.shape))
    b, t, h, dh = q.shape
    if k.shape[:2] != (b, t) or v.shape[:2] != (b, t) or k.shape[3] != dh or v.shape[3] != dh:
        raise ValueError("q %s, k %s and v %s disagree in batch, seq or d_head" % (q.shape, k.shape, v.shape))
    d = L.AttnDesc()
    _lib.gsink_attn_desc_init_size(ctypes.byref(d), ctypes.sizeof(d))
    d.batch, d.seq, d.n_heads = _cint(b, "batch"), _cint(t, "seq"), _cint(h, "n_heads")
    d.n_kv_heads, d.n_v_heads, d.d_head = _cint(k.shape[2], "n_kv_heads"), _cint(v.shape[2], "n_v_heads"), _cint(dh, "d_head")
    d.softmax_scale = float(softmax_scale)
    d.sink_window = _cint(sink_window, "sink_window")
    return d


def _f32(a, name):
    arr = np.asarray(a)
    if arr.dtype.kind != "f":
        raise TypeError("%s must be a floating-point array, got dtype %s" % (name, arr.dtype))
    return np.ascontiguousarray(arr, dtype=np.float32)


class Ops(_Handle):
    """Operations on caller buffers (gsink_ops) on the CPU: V-scale and causal
    attention with the column statistics computed in the kernel, the model's
    own kernels. Ops(n_threads=0, device=DeviceKind.CPU, device_index=0).

    The numpy methods need a CPU handle (host arrays); a CUDA handle is used
    through the raw_* methods with device pointers (gsink.torch does).
    precision ("fp32" default, "tf32", "bf16" or a Precision) sets the
    attention's matrix products; TF32 and BF16 need CUDA (UnsupportedError)."""

    _free_fn = staticmethod(_lib.gsink_ops_free)
    _errmsg_fn = staticmethod(_lib.gsink_ops_errmsg)
    _kind = "ops handle"

    def __init__(self, n_threads=0, device=DeviceKind.CPU, device_index=0, precision=None):
        o = L.OpsOptions()
        _lib.gsink_ops_options_init_size(ctypes.byref(o), ctypes.sizeof(o))
        o.device = _enum_arg(device, DeviceKind, "device")
        o.device_index = _cint(device_index, "device_index")
        o.n_threads = _cint(n_threads, "n_threads")
        if precision is not None:
            o.precision = _enum_arg(precision, Precision, "precision")
        h = ctypes.c_void_p()
        _check(_lib.gsink_ops_create(ctypes.byref(o), ctypes.byref(h)))
        self._h = h.value
        self.device = DeviceKind(o.device)
        self.device_index = o.device_index
        self.precision = Precision(o.precision)
        self._stream = None

    def set_stream(self, stream=None):
        """gsink_ops_set_stream: CUDA only (a cudaStream_t as an int); the
        CPU accepts None only."""
        self._ok(_lib.gsink_ops_set_stream(self._handle(), stream))
        self._stream = stream

    def _host(self):
        if self.device != DeviceKind.CPU:
            raise ValueError("numpy arrays need a CPU ops handle (this one is on %s:%d); "
                             "use gsink.torch for device tensors" % (self.device.name, self.device_index))
        return self._handle()

    # Raw entry points: descriptors built by the caller and buffer addresses
    # (ints, or None for an optional output) on the handle's device.
    def raw_attention_forward(self, desc, q, k, v, out, lse, col_mass=None, col_sq=None, col_win=None):
        self._ok(_lib.gsink_ops_attention_forward(self._handle(), ctypes.byref(desc), q, k, v, out, lse,
                                                  col_mass, col_sq, col_win))

    def raw_attention_backward(self, desc, q, k, v, out, lse, dout, dq, dk, dv,
                               col_mass=None, col_sq=None, col_win=None):
        self._ok(_lib.gsink_ops_attention_backward(self._handle(), ctypes.byref(desc), q, k, v, out, lse,
                                                   dout, dq, dk, dv, col_mass, col_sq, col_win))

    def raw_vscale_forward(self, desc, v, theta, out):
        self._ok(_lib.gsink_ops_vscale_forward(self._handle(), ctypes.byref(desc), v, theta, out))

    def raw_vscale_backward(self, desc, v, theta, dout, dv, dtheta=None):
        self._ok(_lib.gsink_ops_vscale_backward(self._handle(), ctypes.byref(desc), v, theta, dout, dv,
                                                dtheta))

    def attention_forward(self, q, k, v, softmax_scale=0.0, sink_window=64):
        """(out, lse, col_mass, col_sq, col_win) of causal attention."""
        h = self._host()
        q, k, v = _f32(q, "q"), _f32(k, "k"), _f32(v, "v")
        d = _attn_desc(q, k, v, softmax_scale, sink_window)
        st = (d.batch, d.n_heads, d.seq)
        out = np.empty(q.shape, dtype=np.float32)
        lse, m, sq, win = (np.empty(st, dtype=np.float32) for _ in range(4))
        self._ok(_lib.gsink_ops_attention_forward(h, ctypes.byref(d), q.ctypes.data, k.ctypes.data,
                                                  v.ctypes.data, out.ctypes.data, lse.ctypes.data,
                                                  m.ctypes.data, sq.ctypes.data, win.ctypes.data))
        return out, lse, m, sq, win

    def attention_stats(self, q, k, lse, softmax_scale=0.0, sink_window=64):
        """(col_mass, col_sq, col_win) from q, k and the forward's lse."""
        h = self._host()
        q, k = _f32(q, "q"), _f32(k, "k")
        d = _attn_desc(q, k, k, softmax_scale, sink_window)
        lse = _float_input(lse, "lse", (d.batch, d.n_heads, d.seq))
        m, sq, win = (np.empty((d.batch, d.n_heads, d.seq), dtype=np.float32) for _ in range(3))
        self._ok(_lib.gsink_ops_attention_stats(h, ctypes.byref(d), q.ctypes.data, k.ctypes.data,
                                                lse.ctypes.data, m.ctypes.data, sq.ctypes.data,
                                                win.ctypes.data))
        return m, sq, win

    def attention_backward(self, q, k, v, out, lse, dout, softmax_scale=0.0):
        """(dq, dk, dv) from dL/dout and the forward's out and lse."""
        h = self._host()
        q, k, v = _f32(q, "q"), _f32(k, "k"), _f32(v, "v")
        d = _attn_desc(q, k, v, softmax_scale, 64)
        out = _float_input(out, "out", q.shape)
        dout = _float_input(dout, "dout", q.shape)
        lse = _float_input(lse, "lse", (d.batch, d.n_heads, d.seq))
        dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
        self._ok(_lib.gsink_ops_attention_backward(
            h, ctypes.byref(d), q.ctypes.data, k.ctypes.data, v.ctypes.data, out.ctypes.data, lse.ctypes.data,
            dout.ctypes.data, dq.ctypes.data, dk.ctypes.data, dv.ctypes.data, None, None, None))
        return dq, dk, dv

    def _vscale_desc(self, v, heads_out, d_model, sigma, mode):
        if v.ndim != 3:
            raise ValueError("v must have shape (rows, heads, d_head), got %s" % (v.shape,))
        d = L.VScaleDesc()
        _lib.gsink_vscale_desc_init_size(ctypes.byref(d), ctypes.sizeof(d))
        d.mode = _enum_arg(mode, VScaleMode, "mode")
        d.n_rows, d.heads_in, d.d_head = (_cint(x, "v shape") for x in v.shape)
        d.heads_out = _cint(v.shape[1] if heads_out is None else heads_out, "heads_out")
        d.d_model = _cint(d_model, "d_model")
        d.sigma = float(sigma)
        return d

    def vscale_forward(self, v, theta, d_model, sigma=0.02, mode=VScaleMode.FULL, heads_out=None):
        """V-scale of v (rows, heads_in, d_head) -> (rows, heads_out, d_head)."""
        h = self._host()
        v = _f32(v, "v")
        d = self._vscale_desc(v, heads_out, d_model, sigma, mode)
        th = None if theta is None else _float_input(theta, "theta", (d.heads_out,))
        out = np.empty((d.n_rows, d.heads_out, d.d_head), dtype=np.float32)
        self._ok(_lib.gsink_ops_vscale_forward(h, ctypes.byref(d), v.ctypes.data,
                                               None if th is None else th.ctypes.data, out.ctypes.data))
        return out

    def vscale_backward(self, v, theta, dout, d_model, sigma=0.02, mode=VScaleMode.FULL, dtheta=None):
        """dL/dv; dL/dtheta is added into dtheta (float32, heads_out) if given."""
        h = self._host()
        v = _f32(v, "v")
        dout = _f32(dout, "dout")
        d = self._vscale_desc(v, dout.shape[1] if dout.ndim == 3 else None, d_model, sigma, mode)
        dout = _float_input(dout, "dout", (d.n_rows, d.heads_out, d.d_head))
        th = None if theta is None else _float_input(theta, "theta", (d.heads_out,))
        if dtheta is not None:
            dtheta = _out_array(dtheta, (d.heads_out,), "dtheta")
        dv = np.empty_like(v)
        self._ok(_lib.gsink_ops_vscale_backward(
            h, ctypes.byref(d), v.ctypes.data, None if th is None else th.ctypes.data, dout.ctypes.data,
            dv.ctypes.data, None if dtheta is None else dtheta.ctypes.data))
        return dv


def metric_token_norms(x, head=ALL_HEADS, agg=BatchAgg.SUM_THEN_NORM):
    """Token-wise norms (seq,) of x (batch, seq, width) or (batch, seq, heads, head_width)."""
    x = _f32(x, "x")
    if x.ndim == 3:
        x = x.reshape(x.shape[0], x.shape[1], 1, x.shape[2])
    if x.ndim != 4:
        raise ValueError("x must have 3 or 4 dimensions, got %s" % (x.shape,))
    out = np.empty(x.shape[1], dtype=np.float32)
    _check(_lib.gsink_metric_token_norms(x.ctypes.data, *(_cint(n, "x shape") for n in x.shape),
                                         _cint(head, "head"), _enum_arg(agg, BatchAgg, "agg"),
                                         out.ctypes.data, out.size))
    return out


def metric_gradient_sink_ratio(norms, s=0, t_e=31):
    """R_GS(s; T_e) from token-wise gradient norms."""
    n = _f32(norms, "norms").reshape(-1)
    r = ctypes.c_float(0)
    _check(_lib.gsink_metric_gradient_sink_ratio(n.ctypes.data, n.size, _cint(s, "s"), _cint(t_e, "t_e"),
                                                 ctypes.byref(r)))
    return r.value


def metric_massive_activation_ratio(norms):
    """t0/early from PER_SEQUENCE activation norms (>= 16 values)."""
    n = _f32(norms, "norms").reshape(-1)
    r = ctypes.c_float(0)
    _check(_lib.gsink_metric_massive_activation_ratio(n.ctypes.data, n.size, ctypes.byref(r)))
    return r.value


def _stat(a, name):
    a = _f32(a, name)
    if a.ndim != 3:
        raise ValueError("%s must have shape (batch, heads, seq), got %s" % (name, a.shape))
    return a


def metric_column_mean(stat):
    """Batch mean (heads, seq) of a column statistic (batch, heads, seq)."""
    a = _stat(stat, "stat")
    out = np.empty(a.shape[1:], dtype=np.float32)
    _check(_lib.gsink_metric_column_mean(a.ctypes.data, *(_cint(n, "shape") for n in a.shape),
                                         out.ctypes.data, out.size))
    return out


def metric_sink_scores(col_win, sink_window, s=0):
    """alpha_s^h (heads,) from col_win (batch, heads, seq)."""
    a = _stat(col_win, "col_win")
    out = np.empty(a.shape[1], dtype=np.float32)
    _check(_lib.gsink_metric_sink_scores(a.ctypes.data, *(_cint(n, "shape") for n in a.shape),
                                         _cint(sink_window, "sink_window"), _cint(s, "s"),
                                         out.ctypes.data, out.size))
    return out


def metric_sink_rate(col_win, sink_window, s=0, eps=0.3):
    """Share of heads with alpha_s^h > eps."""
    a = _stat(col_win, "col_win")
    r = ctypes.c_float(0)
    _check(_lib.gsink_metric_sink_rate(a.ctypes.data, *(_cint(n, "shape") for n in a.shape),
                                       _cint(sink_window, "sink_window"), _cint(s, "s"), float(eps),
                                       ctypes.byref(r)))
    return r.value


def metric_branch_ratios(grad_in, grad_out, grad_normed, agg=BatchAgg.SUM_THEN_NORM):
    """(bloat, change, compress), each (seq,), from three (batch, seq, width) gradients."""
    gi = _f32(grad_in, "grad_in")
    if gi.ndim != 3:
        raise ValueError("grad_in must have shape (batch, seq, width), got %s" % (gi.shape,))
    go = _float_input(grad_out, "grad_out", gi.shape)
    gn = _float_input(grad_normed, "grad_normed", gi.shape)
    out = [np.empty(gi.shape[1], dtype=np.float32) for _ in range(3)]
    _check(_lib.gsink_metric_branch_ratios(gi.ctypes.data, go.ctypes.data, gn.ctypes.data,
                                           *(_cint(n, "shape") for n in gi.shape),
                                           _enum_arg(agg, BatchAgg, "agg"),
                                           *(o.ctypes.data for o in out), gi.shape[1]))
    return tuple(out)
