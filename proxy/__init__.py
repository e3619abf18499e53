"""The proxy: how a candidate is measured cheaply. Proxy datasets (`data`), the protocol and the
projection of a target design onto it (`protocol`), proxy training (`training`), the
weight-sharing supernet trained once and candidates scored on it (`supernet`), and how all of
it runs on this machine (`runtime`: precision, threads; `allocator`: jemalloc)."""
from .data import DATASETS, DataConfig, ProxyData, get_proxy_data
from .protocol import ProxyProtocol, project_to_proxy, proxy_of
from .runtime import precision_record, resolve_precision
from .training import NonFiniteLossError, ProxyResult, evaluate, train_proxy

__all__ = ["DATASETS", "DataConfig", "NonFiniteLossError", "ProxyData", "ProxyProtocol", "ProxyResult", "evaluate",
           "get_proxy_data", "precision_record", "project_to_proxy", "proxy_of", "resolve_precision", "train_proxy"]
