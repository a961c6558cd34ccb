"""gunicorn settings for the web front-end.

gevent workers: a request that waits for its image is a parked greenlet, not
a thread, so each worker process holds up to ``worker_connections`` requests
at once for a few kB each (see README, "Web server"). One process per core.
"""

import multiprocessing
import os

bind = f"{os.environ.get('IMAGEGATE_HOST', '0.0.0.0')}:{os.environ.get('PORT', '8080')}"
worker_class = "gevent"
workers = int(os.environ.get("IMAGEGATE_WEB_PROCESSES", multiprocessing.cpu_count()))
worker_connections = int(os.environ.get("IMAGEGATE_WEB_CONNECTIONS", "2000"))
# A synchronous request may wait the whole budget; gunicorn's timeout is about
# a silent worker process, which gevent workers never are while waiting.
timeout = 30
graceful_timeout = int(float(os.environ.get("IMAGEGATE_SYNC_BUDGET_SECONDS", "120"))) + 5
keepalive = 5
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'
errorlog = "-"
