"""What an operator sees of the server: `metrics.py`, the Prometheus metrics (one view across
worker processes) and the observer that counts every HTTP answer by route template; `loop.py`,
the event loop's lag, measured inside the server.

May import `serving/http/routes.py` (templates) and the layers below `serving/`.
"""
