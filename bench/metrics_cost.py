"""CPU that metrics add per image: every metric call one job of one image makes, timed.

    python -m bench.metrics_cost [--jobs 20000]

One job of one image, end to end, makes these calls (web and worker together):
the web's request counter, latency histogram and in-progress gauge (inc + dec), the
money reserved; the worker's time in queue, jobs running (inc + dec), time in the
worker and at the upstream, one upstream exchange (counter + histogram), the image
and its bytes stored, the job's outcome and the money settled. They run here in
multiprocess mode (memory-mapped files in a temporary directory, as in production),
label lookups included, and the CPU time (``time.process_time``) per job is printed.
The Redis reads of the cluster gauges happen at scrape time, not per image.
"""

from __future__ import annotations

import argparse
import tempfile
import time


def one_job(m) -> None:  # noqa: ANN001 - the shared.metrics module
    route, model, family = "/v1/images/generations", "dall-e-2", "openai"
    m.HTTP_IN_PROGRESS.labels(route).inc()
    m.MONEY_RESERVED.labels(model).inc(20000)
    m.JOB_QUEUE_SECONDS.labels(family).observe(0.01)
    running = m.JOBS_RUNNING.labels(family)
    running.inc()
    m.UPSTREAM_REQUESTS.labels(family, model, m.status_class(200)).inc()
    m.UPSTREAM_DURATION.labels(family, model).observe(1.2)
    m.JOB_UPSTREAM_SECONDS.labels(model, family).observe(1.2)
    m.IMAGES_STORED.labels(model).inc()
    m.IMAGE_BYTES_STORED.labels(model).inc(1_500_000)
    m.job_ended(model, family, "succeeded", None, settled=20000)
    running.dec()
    m.JOB_RUN_SECONDS.labels(model, family, "succeeded").observe(1.3)
    m.HTTP_REQUESTS.labels(route, "POST", "200", model).inc()
    m.HTTP_DURATION.labels(route, "POST", model).observe(1.4)
    m.HTTP_IN_PROGRESS.labels(route).dec()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as path:
        from shared import metrics

        metrics.activate(path)
        one_job(metrics)  # files and label children made once, as in a warm process
        started = time.process_time()
        for _ in range(args.jobs):
            one_job(metrics)
        cpu = time.process_time() - started
    print(f"metrics CPU per image (one job, n=1): {cpu / args.jobs * 1e6:.1f} us")


if __name__ == "__main__":
    main()
