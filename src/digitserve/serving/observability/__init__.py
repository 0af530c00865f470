"""What an operator sees of the server: `metrics.py`, the Prometheus metrics (one view across
worker processes) and the observer that counts every HTTP answer by route template.

May import `serving/http/routes.py` (templates) and the layers below `serving/`.
"""
