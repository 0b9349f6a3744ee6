"""Fetching weight files without a retry storm: the cache first, then one reachability check of the
host, then one download; when the file cannot be had, one error line naming the file to fetch by
hand and the flag that takes its path.

Offline machines were the reason: ``huggingface_hub`` retries an unreachable host five times with
back-off for each candidate file (a minute before open_clip's error), and ``urllib`` without a timeout
can wait minutes on a network that drops packets. Here a host that cannot be resolved, or connected to
within :data:`CONNECT_TIMEOUT_S`, is tried once (through the proxy the environment sets, if any), and
``HF_HUB_OFFLINE=1`` means "the cache or nothing".
"""
from __future__ import annotations

import logging
import os
import socket
import urllib.request
from typing import Sequence
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
_TRUE = {"1", "on", "yes", "true"}


class WeightsUnavailable(FileNotFoundError):
    """A weights file is not on disk and cannot be downloaded now. The message is one line: why, which
    file to fetch elsewhere, and what to pass instead; ``reason`` is the why alone, in a few words."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


def hf_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: use the Hugging Face cache only."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def unreachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """``None`` when ``url``'s host (or the proxy that the environment sets for it) accepts a TCP
    connection, else why not, in a few words. One attempt: a name lookup, then a connection to each
    address the name has, each connection bounded by ``timeout`` (the lookup by the system's resolver)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    what = host
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):  # downloads go through it: it is what must answer
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname or "", proxy_parts.port or 80
        what = f"the proxy {host}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as e:
        return f"cannot resolve {what} ({e.strerror or e})"
    except OSError as e:  # refused, unreachable network, timeout
        return f"cannot connect to {what}:{port} ({e.strerror or type(e).__name__})"


def hf_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except ImportError:  # pragma: no cover - a dependency of open_clip
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def fetch_hf_file(repo_id: str, filenames: Sequence[str], *, what: str, manual: str,
                  cache_dir: str | None = None) -> str:
    """The local path of the first of ``filenames`` in the Hugging Face repo ``repo_id``: from the
    cache, else downloaded (after one reachability check). Errors are :class:`WeightsUnavailable`:
    ``what`` names the weights (plural: "the ViT-B-32 weights 'openai'"), ``manual`` ends the line
    with what to do by hand (where to fetch the file, which flag takes it)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    for name in filenames:  # the file system only (hf_hub_download may touch the network even when told not to)
        cached = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(cached, str):
            return cached
    if hf_offline():
        raise WeightsUnavailable(f"{what} ({repo_id}) are not in the Hugging Face cache, and HF_HUB_OFFLINE is set. "
                                 f"{manual}", "not in the cache, and HF_HUB_OFFLINE is set")
    endpoint = hf_endpoint()
    why = unreachable(endpoint)
    if why:
        raise WeightsUnavailable(f"{what} ({repo_id}) are not in the Hugging Face cache, and {why}. {manual}",
                                 f"not in the cache, and {why}")
    last: Exception | None = None
    for name in filenames:
        log.info("downloading %s/%s from %s", repo_id, name, endpoint)
        try:
            return hf_hub_download(repo_id, name, cache_dir=cache_dir)
        except LocalEntryNotFoundError as e:  # the connection failed after all (a subclass of the next)
            last = e
            break
        except EntryNotFoundError as e:  # the repo has the next candidate instead
            last = e
        except Exception as e:  # noqa: BLE001 - network and server errors of several libraries
            last = e
            break
    detail = str(last).splitlines()[0][:160] if last and str(last) else ""
    raise WeightsUnavailable(f"could not download {what} ({repo_id}: {type(last).__name__} {detail}). {manual}",
                             f"the download failed ({type(last).__name__})")


def check_reachable(url: str, *, what: str, manual: str) -> None:
    """Raise :class:`WeightsUnavailable` unless ``url``'s host can be reached (one attempt)."""
    why = unreachable(url)
    if why:
        raise WeightsUnavailable(f"{what} are not on this machine, and {why}. {manual}", f"not here, and {why}")
