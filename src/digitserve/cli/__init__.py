"""The `digitserve` command, one module per group of subcommands:

- `main.py`: the parser, `data fetch`, `serve` (which imports the server only when it runs);
- `predict.py`: `predict FILE...`, a table or JSON lines from a running server (digitserve.client);
- `registry.py`: `registry list / show / promote / rollback / history`;
- `rollout.py`: `registry watch / retire / disagreements` and promotion from a canary's evidence;
- `feedback.py`: `feedback list / show / accept / reject / export`.

The top of the layers: it may import any part of digitserve, but each subcommand imports the
heavy parts (the server, the gate, torch) inside the function that runs it, so
`digitserve --help` stays instant and torch-free.
"""
