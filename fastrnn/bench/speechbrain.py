"""SpeechBrain's recurrent module, loaded alone: ``speechbrain/nnet/RNN.py`` of an installed
SpeechBrain (1.1.2, installed with ``pip install --no-deps speechbrain``: ``import speechbrain``
pulls in torchaudio, which may have no build for the installed torch). The file needs only torch
once the two imports that serve its attention decoder and its logger are stubbed; the stubs live in
sys.modules only while the file runs. The peer of the Li-GRU benchmark rows and the oracle of the
SpeechBrain tests."""
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import os
import sys
import types

_STUBS = {
    "speechbrain": {},
    "speechbrain.nnet": {},
    "speechbrain.nnet.attention": {"ContentBasedAttention": object, "KeyValueAttention": object,
                                   "LocationAwareAttention": object},
    "speechbrain.utils": {},
    "speechbrain.utils.logger": {"get_logger": logging.getLogger},
}
_loaded = []


def version():
    """The installed SpeechBrain's version (from its package metadata), or None."""
    try:
        return importlib.metadata.version("speechbrain")
    except importlib.metadata.PackageNotFoundError:
        return None


def load():
    """The module ``speechbrain.nnet.RNN`` (loaded once), or None when SpeechBrain is not installed."""
    if _loaded:
        return _loaded[0]
    spec = importlib.machinery.PathFinder.find_spec("speechbrain")
    if spec is None or not spec.submodule_search_locations:
        _loaded.append(None)
        return None
    path = os.path.join(spec.submodule_search_locations[0], "nnet", "RNN.py")
    saved = {name: sys.modules.get(name) for name in _STUBS}
    try:
        for name, attrs in _STUBS.items():
            stub = types.ModuleType(name)
            stub.__dict__.update(attrs)
            stub.__path__ = []
            sys.modules[name] = stub
        module_spec = importlib.util.spec_from_file_location("fastrnn_speechbrain_rnn", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    _loaded.append(module)
    return module
