"""gsink: Python binding of libgsink (ctypes).

libgsink runs a Llama-style Transformer forward and backward on the CPU and
measures attention sinks, gradient sinks and massive activations ("Attention
Sinks Induce Gradient Sinks", arXiv 2603.17771), plus the paper's V-scale layer.

    import gsink, numpy as np
    with gsink.Model("tiny", seed=1) as m:
        tokens = np.random.randint(0, m.config.vocab_size, (2, 64), dtype=np.int32)
        loss = m.forward(tokens[:, :-1], tokens[:, 1:])
        m.backward()
        print(loss, m.gradient_sink_ratio(layer=0), m.sink_rate(layer=0))

The shared library is found through $GSINK_LIBRARY, a copy next to this
package, the build trees of a source checkout, or the system linker path.
"""

from . import errors
from ._core import (ALL_HEADS, BACKWARD_ACCUMULATE, ENCODE_ADD_BOS, ENCODE_PARSE_SPECIAL,
                    SITE_COUNT, Analysis, BatchAgg, Branch, Config, DeviceKind, Model, Optimizer, Precision, Site,
                    Tokenizer, VScaleMode, WeightDtype, default_diag_options, device_count, device_describe, last_error,
                    library_path, max_threads, presets, site_name, site_parse, status_str, version,
                    version_number)
from ._lib import EXPECTED_MAJOR, EXPECTED_MINOR
from .errors import *  # noqa: F401,F403  (exception classes)

__version__ = "0.1.0"

__all__ = [
    "Model", "Analysis", "Optimizer", "Tokenizer", "Config", "Site", "BatchAgg", "Branch", "VScaleMode",
    "DeviceKind", "Precision", "WeightDtype", "ALL_HEADS", "BACKWARD_ACCUMULATE", "ENCODE_ADD_BOS", "ENCODE_PARSE_SPECIAL",
    "SITE_COUNT", "version", "version_number", "library_path", "status_str", "last_error",
    "default_diag_options", "device_count", "device_describe", "max_threads", "presets", "site_name", "site_parse", "errors",
    "EXPECTED_MAJOR", "EXPECTED_MINOR",
] + errors.__all__
