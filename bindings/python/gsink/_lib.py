"""Locating and loading libgsink, and the ctypes declarations of its C API.

The declarations mirror include/gsink.h one to one. Array arguments are
declared as c_void_p so that numpy buffers can be passed as plain addresses
(``arr.ctypes.data``) without building ctypes pointer objects on every call.
"""

import ctypes
import ctypes.util
import glob
import os
import sys

# Version of the C API this binding was written against (gsink.h).
EXPECTED_MAJOR = 0
EXPECTED_MINOR = 1

c_int = ctypes.c_int
c_int32 = ctypes.c_int32
c_int64 = ctypes.c_int64
c_uint = ctypes.c_uint
c_uint64 = ctypes.c_uint64
c_float = ctypes.c_float
c_size_t = ctypes.c_size_t
c_char_p = ctypes.c_char_p
c_void_p = ctypes.c_void_p
POINTER = ctypes.POINTER


# Every options/config struct gets TAIL_BYTES of slack after the fields this
# binding knows. The *_init_size functions are given ctypes.sizeof() of the
# whole buffer and write at most min(that, the library's sizeof); a newer
# library whose struct grew (fields are only ever appended) then writes into
# the slack, and its defaults for the new fields travel with the struct.
TAIL_BYTES = 256


def _with_tail(fields):
    return fields + [("_tail", ctypes.c_ubyte * TAIL_BYTES)]


def _known_size(cls):
    """sizeof() of the C struct as this binding knows it (fields up to the
    tail, rounded up to the struct's alignment)."""
    align = max(ctypes.alignment(t) for n, t in cls._fields_ if n != "_tail")
    off = cls._tail.offset
    return (off + align - 1) // align * align


def field_names(cls):
    """Public field names of a struct (without size and the slack)."""
    return [n for n, _ in cls._fields_ if n not in ("size", "_tail")]


class Config(ctypes.Structure):
    _fields_ = _with_tail([
        ("size", c_size_t),
        ("vocab_size", c_int32),
        ("d_model", c_int32),
        ("n_layers", c_int32),
        ("n_heads", c_int32),
        ("n_kv_heads", c_int32),
        ("d_head", c_int32),
        ("d_ff", c_int32),
        ("max_seq_len", c_int32),
        ("rms_eps", c_float),
        ("rope_theta", c_float),
        ("tie_embeddings", c_int32),
        ("init_std", c_float),
        ("arch", c_int32),
        ("qkv_bias", c_int32),
        ("rope_scaling", c_int32),
        ("rope_factor", c_float),
        ("rope_low_freq_factor", c_float),
        ("rope_high_freq_factor", c_float),
        ("rope_original_max_pos", c_int32),
        ("rope_beta_fast", c_float),
        ("rope_beta_slow", c_float),
        ("rope_attention_factor", c_float),
        ("rope_truncate", c_int32),
        ("qk_norm", c_int32),
        ("rope_dims", c_int32),
        ("rope_interleaved", c_int32),
        ("sandwich_norm", c_int32),
        ("sliding_window", c_int32),
    ])


class ModelOptions(ctypes.Structure):
    _fields_ = _with_tail([
        ("size", c_size_t),
        ("device", c_int32),
        ("device_index", c_int32),
        ("n_threads", c_int32),
        ("seed", c_uint64),
        ("precision", c_int32),
        ("flags", ctypes.c_uint32),
        ("weight_dtype", c_int32),
    ])


class DiagOptions(ctypes.Structure):
    _fields_ = _with_tail([
        ("size", c_size_t),
        ("sink_eps", c_float),
        ("sink_window", c_int32),
        ("rgs_window", c_int32),
        ("sink_position", c_int32),
        ("batch_agg", c_int32),
    ])


class VScaleOptions(ctypes.Structure):
    _fields_ = _with_tail([
        ("size", c_size_t),
        ("mode", c_int32),
        ("sigma", c_float),
        ("learnable_theta", c_int32),
        ("per_query_head", c_int32),
    ])


class OptimizerOptions(ctypes.Structure):
    _fields_ = _with_tail([
        ("size", c_size_t),
        ("lr", c_float),
        ("min_lr", c_float),
        ("warmup_steps", c_int32),
        ("total_steps", c_int32),
        ("beta1", c_float),
        ("beta2", c_float),
        ("eps", c_float),
        ("weight_decay", c_float),
        ("grad_clip", c_float),
        ("accumulation_steps", c_int32),
    ])


class OpsOptions(ctypes.Structure):
    _fields_ = _with_tail([
        ("size", c_size_t),
        ("device", c_int32),
        ("device_index", c_int32),
        ("n_threads", c_int32),
        ("precision", c_int32),
    ])


# The operation descriptors carry no slack: the library accepts exactly its
# own sizeof (a descriptor is input only), so size must be ctypes.sizeof.
class AttnDesc(ctypes.Structure):
    _fields_ = [
        ("size", c_size_t),
        ("batch", c_int32),
        ("seq", c_int32),
        ("n_heads", c_int32),
        ("n_kv_heads", c_int32),
        ("n_v_heads", c_int32),
        ("d_head", c_int32),
        ("softmax_scale", c_float),
        ("sink_window", c_int32),
        ("layout", c_int32),
    ]


class VScaleDesc(ctypes.Structure):
    _fields_ = [
        ("size", c_size_t),
        ("mode", c_int32),
        ("n_rows", c_int32),
        ("heads_in", c_int32),
        ("heads_out", c_int32),
        ("d_head", c_int32),
        ("d_model", c_int32),
        ("sigma", c_float),
    ]


for _cls in (Config, ModelOptions, DiagOptions, VScaleOptions, OptimizerOptions, OpsOptions):
    _cls.known_size = _known_size(_cls)
for _cls in (AttnDesc, VScaleDesc):
    _cls.known_size = ctypes.sizeof(_cls)

S = c_int  # gsink_status (an enum: int)
# gsink_progress_fn: int (*)(int64_t done, int64_t total, void *user_data)
PROGRESS_FN = ctypes.CFUNCTYPE(c_int, c_int64, c_int64, c_void_p)
P = c_void_p  # handles and array buffers

# name -> (restype, argtypes). Every GSINK_API function of gsink.h; the test
# suite checks that this table and the header agree.
PROTOTYPES = {
    # versions, status, memory
    "gsink_version_number": (c_int, []),
    "gsink_version_string": (c_char_p, []),
    "gsink_status_str": (c_char_p, [c_int]),
    "gsink_last_error": (c_char_p, []),
    "gsink_free": (None, [c_void_p]),
    # devices
    "gsink_device_count": (S, [c_int, POINTER(c_int)]),
    "gsink_device_describe": (S, [c_int, c_int, c_char_p, c_size_t]),
    "gsink_max_threads": (c_int, []),
    # configuration
    "gsink_config_init_size": (None, [POINTER(Config), c_size_t]),
    "gsink_config_preset_size": (S, [c_char_p, POINTER(Config), c_size_t]),
    "gsink_config_preset_name": (c_char_p, [c_int]),
    "gsink_config_validate": (S, [POINTER(Config)]),
    "gsink_arch_name": (c_char_p, [c_int]),
    "gsink_rope_scaling_name": (c_char_p, [c_int]),
    # models
    "gsink_model_options_init_size": (None, [POINTER(ModelOptions), c_size_t]),
    "gsink_model_create": (S, [POINTER(Config), POINTER(ModelOptions), POINTER(c_void_p)]),
    "gsink_model_free": (None, [P]),
    "gsink_model_config": (S, [P, POINTER(Config)]),
    "gsink_model_errmsg": (c_char_p, [P]),
    "gsink_model_set_threads": (S, [P, c_int]),
    "gsink_model_memory": (S, [P, POINTER(c_uint64), POINTER(c_uint64), ctypes.c_uint32]),
    "gsink_param_count": (S, [P, POINTER(c_size_t)]),
    "gsink_param_info": (S, [P, c_size_t, POINTER(c_char_p), POINTER(c_int), POINTER(c_int64)]),
    "gsink_param_numel": (S, [P, POINTER(c_size_t)]),
    "gsink_get_param": (S, [P, c_char_p, P, c_size_t]),
    "gsink_set_param": (S, [P, c_char_p, P, c_size_t]),
    "gsink_get_param_grad": (S, [P, c_char_p, P, c_size_t]),
    "gsink_get_params_flat": (S, [P, P, c_size_t]),
    "gsink_set_params_flat": (S, [P, P, c_size_t]),
    "gsink_get_grads_flat": (S, [P, P, c_size_t]),
    "gsink_set_grads_flat": (S, [P, P, c_size_t]),
    # forward / backward
    "gsink_forward": (S, [P, P, P, c_int, c_int, POINTER(c_float)]),
    "gsink_backward": (S, [P, c_uint]),
    "gsink_zero_grad": (S, [P]),
    "gsink_last_shape": (S, [P, POINTER(c_int), POINTER(c_int)]),
    "gsink_get_logits": (S, [P, P, c_size_t]),
    # sites
    "gsink_site_name": (c_char_p, [c_int]),
    "gsink_site_parse": (S, [c_char_p, POINTER(c_int), POINTER(c_int)]),
    "gsink_site_dims": (S, [P, c_int, POINTER(c_int), POINTER(c_int)]),
    "gsink_get_activation_norms": (S, [P, c_int, c_int, c_int, P, c_size_t]),
    "gsink_get_gradient_norms": (S, [P, c_int, c_int, c_int, c_int, P, c_size_t]),
    "gsink_get_activation": (S, [P, c_int, c_int, P, c_size_t]),
    "gsink_get_gradient": (S, [P, c_int, c_int, P, c_size_t]),
    # attention statistics
    "gsink_diag_options_init_size": (None, [POINTER(DiagOptions), c_size_t]),
    "gsink_set_diag_options": (S, [P, POINTER(DiagOptions)]),
    "gsink_get_diag_options": (S, [P, POINTER(DiagOptions)]),
    "gsink_attention_column_mass": (S, [P, c_int, c_int, P, P, c_size_t]),
    "gsink_sink_scores": (S, [P, c_int, c_int, P, c_size_t]),
    "gsink_sink_rate": (S, [P, c_int, c_int, c_float, POINTER(c_float)]),
    "gsink_attention_pattern": (S, [P, c_int, c_int, c_int, P, c_size_t]),
    # derived metrics
    "gsink_gradient_sink_ratio": (S, [P, c_int, c_int, c_int, c_int, POINTER(c_float)]),
    "gsink_branch_ratios": (S, [P, c_int, c_int, c_int, P, P, P, c_size_t]),
    "gsink_massive_activation_ratio": (S, [P, c_int, c_int, POINTER(c_float)]),
    "gsink_qkv_gradient_split": (S, [P, c_int, c_int, P, P, P, c_size_t]),
    "gsink_report_json": (S, [P, POINTER(DiagOptions), POINTER(c_void_p)]),
    # streaming diagnostics over micro-batches
    "gsink_analysis_begin": (S, [P, c_int, POINTER(DiagOptions), POINTER(c_void_p)]),
    "gsink_analysis_add": (S, [P, P, P, c_int, c_int]),
    "gsink_analysis_finish": (S, [P]),
    "gsink_analysis_report_json": (S, [P, POINTER(DiagOptions), POINTER(c_void_p)]),
    "gsink_analysis_gradient_norms": (S, [P, c_int, c_int, c_int, c_int, P, c_size_t, POINTER(c_size_t)]),
    "gsink_analysis_counts": (S, [P, POINTER(c_int64), POINTER(c_int64), POINTER(c_int64)]),
    "gsink_analysis_memory": (S, [P, POINTER(c_uint64), POINTER(c_uint64)]),
    "gsink_analysis_state_size": (S, [P, POINTER(c_size_t)]),
    "gsink_analysis_get_state": (S, [P, P, c_size_t]),
    "gsink_analysis_set_state": (S, [P, P, c_size_t]),
    "gsink_analysis_errmsg": (c_char_p, [P]),
    "gsink_analysis_free": (None, [P]),
    "gsink_analyze_sequences": (S, [P, P, c_int, c_int, c_int, POINTER(DiagOptions), P, P, POINTER(c_void_p)]),
    # V-scale
    "gsink_vscale_options_init_size": (None, [POINTER(VScaleOptions), c_size_t]),
    "gsink_vscale_enable": (S, [P, POINTER(VScaleOptions)]),
    "gsink_vscale_get": (S, [P, POINTER(VScaleOptions)]),
    "gsink_vscale_theta_count": (S, [P, POINTER(c_size_t)]),
    "gsink_vscale_get_theta": (S, [P, P, c_size_t]),
    "gsink_vscale_set_theta": (S, [P, P, c_size_t]),
    "gsink_vscale_get_theta_grad": (S, [P, P, c_size_t]),
    # optimizer
    "gsink_optimizer_options_init_size": (None, [POINTER(OptimizerOptions), c_size_t]),
    "gsink_optimizer_create": (S, [P, POINTER(OptimizerOptions), POINTER(c_void_p)]),
    "gsink_optimizer_free": (None, [P]),
    "gsink_optimizer_errmsg": (c_char_p, [P]),
    "gsink_optimizer_lr_at": (c_float, [P, c_int64]),
    "gsink_optimizer_step": (S, [P, POINTER(c_float)]),
    "gsink_optimizer_step_count": (c_int64, [P]),
    "gsink_optimizer_save": (S, [P, c_char_p]),
    "gsink_optimizer_load": (S, [P, c_char_p]),
    # checkpoints
    "gsink_model_load": (S, [c_char_p, POINTER(ModelOptions), POINTER(c_void_p)]),
    "gsink_model_save": (S, [P, c_char_p]),
    # embedding: operations on caller buffers and metrics on caller tensors
    "gsink_ops_options_init_size": (None, [POINTER(OpsOptions), c_size_t]),
    "gsink_ops_create": (S, [POINTER(OpsOptions), POINTER(c_void_p)]),
    "gsink_ops_free": (None, [P]),
    "gsink_ops_errmsg": (c_char_p, [P]),
    "gsink_ops_set_stream": (S, [P, c_void_p]),
    "gsink_attn_desc_init_size": (None, [POINTER(AttnDesc), c_size_t]),
    "gsink_ops_attention_forward": (S, [P, POINTER(AttnDesc), P, P, P, P, P, P, P, P]),
    "gsink_ops_attention_backward": (S, [P, POINTER(AttnDesc)] + [P] * 12),
    "gsink_ops_attention_stats": (S, [P, POINTER(AttnDesc), P, P, P, P, P, P]),
    "gsink_vscale_desc_init_size": (None, [POINTER(VScaleDesc), c_size_t]),
    "gsink_ops_vscale_forward": (S, [P, POINTER(VScaleDesc), P, P, P]),
    "gsink_ops_vscale_backward": (S, [P, POINTER(VScaleDesc), P, P, P, P, P]),
    "gsink_metric_token_norms": (S, [P, c_int, c_int, c_int, c_int, c_int, c_int, P, c_size_t]),
    "gsink_metric_gradient_sink_ratio": (S, [P, c_size_t, c_int, c_int, POINTER(c_float)]),
    "gsink_metric_massive_activation_ratio": (S, [P, c_size_t, POINTER(c_float)]),
    "gsink_metric_column_mean": (S, [P, c_int, c_int, c_int, P, c_size_t]),
    "gsink_metric_sink_scores": (S, [P, c_int, c_int, c_int, c_int, c_int, P, c_size_t]),
    "gsink_metric_sink_rate": (S, [P, c_int, c_int, c_int, c_int, c_int, c_float, POINTER(c_float)]),
    "gsink_metric_branch_ratios": (S, [P, P, P, c_int, c_int, c_int, c_int, P, P, P, c_size_t]),
    # tokenizer
    "gsink_tokenizer_load_gguf": (S, [c_char_p, POINTER(c_void_p)]),
    "gsink_tokenizer_load_json": (S, [c_char_p, POINTER(c_void_p)]),
    "gsink_tokenizer_token_id": (S, [P, c_char_p, POINTER(c_int32)]),
    "gsink_tokenizer_free": (None, [P]),
    "gsink_tokenizer_errmsg": (c_char_p, [P]),
    "gsink_tokenizer_vocab_size": (S, [P, POINTER(c_int32)]),
    "gsink_tokenizer_special": (S, [P, POINTER(c_int32), POINTER(c_int32)]),
    "gsink_tokenizer_encode": (S, [P, c_char_p, c_size_t, c_uint, P, c_size_t, POINTER(c_size_t)]),
    "gsink_tokenizer_decode": (S, [P, P, c_size_t, c_char_p, c_size_t, POINTER(c_size_t)]),
}

_SONAME = "libgsink.so.0"


def _linked_against_sanitizer(path):
    """True if the shared object needs a sanitizer runtime (loading such a
    library into a normal Python process aborts instead of raising)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    return b"libasan.so" in data or b"libtsan.so" in data or b"libmsan.so" in data


def _package_dir():
    return os.path.dirname(os.path.abspath(__file__))


def candidate_paths():
    """Library paths to try, in order, with a description of where each came
    from. The environment variable wins; then a copy next to the package;
    then the build trees of a source checkout; then the system linker."""
    out = []
    env = os.environ.get("GSINK_LIBRARY")
    if env:
        out.append((env, "GSINK_LIBRARY"))
        return out  # an explicit choice is never overridden
    pkg = _package_dir()
    for p in sorted(glob.glob(os.path.join(pkg, "libgsink.so*")), key=len):
        out.append((p, "package directory"))
    repo = os.path.abspath(os.path.join(pkg, "..", "..", ".."))
    if os.path.isfile(os.path.join(repo, "include", "gsink.h")):
        builds = []
        for d in glob.glob(os.path.join(repo, "build*", "lib")):
            lib = os.path.join(d, "libgsink.so")
            if os.path.exists(lib) and not _linked_against_sanitizer(lib):
                builds.append(lib)
        # "build" first, then the most recently built tree.
        builds.sort(key=lambda p: (os.path.basename(os.path.dirname(os.path.dirname(p))) != "build",
                                   -os.path.getmtime(p)))
        out.extend((b, "build tree") for b in builds)
    found = ctypes.util.find_library("gsink")
    if found:
        out.append((found, "system linker path"))
    out.append((_SONAME, "system linker path"))
    return out


def _declare(lib):
    missing = []
    for name, (restype, argtypes) in PROTOTYPES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            missing.append(name)
            continue
        fn.restype = restype
        fn.argtypes = argtypes
    return missing


def _version_tuple(n):
    return n // 10000, (n // 100) % 100, n % 100


def check_version(number, expected_major=EXPECTED_MAJOR, expected_minor=EXPECTED_MINOR):
    """Raises ImportError unless a library version number (MAJOR*10000 +
    MINOR*100 + PATCH) is compatible: same major, minor >= expected."""
    major, minor, patch = _version_tuple(number)
    if major != expected_major or minor < expected_minor:
        raise ImportError(
            "libgsink %d.%d.%d is not compatible with this binding, which needs %d.x with x >= %d "
            "(set GSINK_LIBRARY to a matching libgsink.so)"
            % (major, minor, patch, expected_major, expected_minor))


def load():
    """Loads libgsink, declares every function and checks the version.
    Returns (CDLL, path). Raises ImportError with every place tried."""
    tried = []
    for path, origin in candidate_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            tried.append("%s (%s): %s" % (path, origin, e))
            continue
        if not hasattr(lib, "gsink_version_number"):
            tried.append("%s (%s): not libgsink (no gsink_version_number)" % (path, origin))
            continue
        lib.gsink_version_number.restype = c_int
        lib.gsink_version_number.argtypes = []
        check_version(lib.gsink_version_number())
        missing = _declare(lib)
        if missing:
            raise ImportError("%s lacks functions this binding needs: %s"
                              % (path, ", ".join(missing)))
        return lib, path
    raise ImportError(
        "libgsink not found. Build it (meson setup build && meson compile -C build), install it, "
        "or set GSINK_LIBRARY=/path/to/libgsink.so. Tried:\n  " + "\n  ".join(tried))


lib, path = load()
