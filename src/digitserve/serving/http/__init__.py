"""HTTP below the routes: what every connection and request passes before FastAPI runs.

- `protocol.py`: uvicorn's httptools protocol with the limits it lacks (connections per
  process, head and body time limits, URL and header sizes) and the early answer on arrival;
- `admission.py`: the one arrival check of a prediction (in progress, queue room), made by the
  protocol or by the middleware, whichever sees the request first;
- `edge.py`: the one middleware (admission, body limits, drain, request id, observing the answer);
- `answers.py`: the answers the protocol writes itself (408, 414, 431, 503), and what the app is told;
- `request_id.py`: a request's id (`X-Request-ID`), shared by the protocol and the app;
- `routes.py`: the prediction routes' templates, the table the routers and all of the above share;
- `shutdown.py`: the SIGTERM drain and a listener closed without resetting queued connections.

May import `serving/errors.py`, config and the standard library's and uvicorn's HTTP parts; never
the inference, rollouts or API rooms (the app hands it callables).
"""
