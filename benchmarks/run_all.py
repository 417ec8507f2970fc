"""Run every benchmark in turn; each writes its own section of benchmarks/RESULTS.md."""

import runpy
from pathlib import Path

HERE = Path(__file__).resolve().parent
for script in ("bench_int4.py", "bench_prune_distill.py", "bench_int8.py", "bench_codegen.py", "bench_agent.py",
               "bench_cascade.py", "bench_fleet.py", "bench_federated.py",
               "bench_federated_privacy.py", "bench_corpus.py", "bench_reliability.py", "bench_streams.py",
               "bench_anomaly.py", "bench_sensor_stream.py", "bench_timeseries.py"):
    print(f"== {script}", flush=True)
    runpy.run_path(str(HERE / script), run_name="__main__")
