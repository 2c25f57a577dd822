"""Start-up, overlapped: Prefect's API boots while this process loads torch and the backbone.

With no Prefect API configured, Prefect starts a temporary API server (a uvicorn
subprocess: 8 s here, 14 s the first time a state directory is used) when the first
flow runs, and only then does the flow's own work begin. Booted here in a thread
instead, it comes up while the main thread imports torch and builds the backbone
(4-5 s), which the flow's tasks then reuse.
"""

from __future__ import annotations

import threading
from pathlib import Path

from flows.runtime import Runtime


def boot_prefect_api() -> threading.Thread | None:
    """Start the temporary API server in the background; join the thread before any flow runs.

    Joining matters: Prefect's own start() returns at once while another thread is
    still waiting for the server to answer. None when a server is configured.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    # A failed start is not lost: it resets the server, and the flow's own start() raises the error.
    thread = threading.Thread(target=SubprocessASGIServer().start, name="prefect-api-boot", daemon=True)
    thread.start()
    return thread


def load_backbone_early(rt: Runtime) -> None:
    """Build the configured backbone now, for in-process extraction to reuse (see tasks.extract)."""
    if rt.ray_address is not None:
        return  # Ray actors build their own
    from tasks.extract import shared_backbone

    shared_backbone(rt.config.sampling, rt.config.backbone, Path(rt.torch_hub_dir), rt.config.sources)
