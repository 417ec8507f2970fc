"""`python -m edgewise.sim.receiver EVENTS_DB PORT`: a server-tier event receiver on loopback.

Used by the tests and benchmarks as a real upstream process; `edgewise agent` will subsume it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn

from edgewise.agent.forward.receiver import EventStore
from edgewise.agent.serve.service import create_app

if __name__ == "__main__":
    app = create_app(EventStore(Path(sys.argv[1])))
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
