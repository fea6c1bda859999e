"""``serialmux``: the command-line client of serialmuxd's HTTP/WebSocket API (not the daemon's own CLI,
which is ``serialmuxd.cli``).

Modules, each with one job: ``main`` (arguments, dispatch, exit codes), ``settings`` (URL and credentials
from flags, environment and the config file), ``http`` (the aiohttp session and JSON errors), ``errors``
(error codes to exit codes), ``lines`` (guest bytes and status lines out), ``escape`` (the ssh-style
escape key, pure), ``visible`` (control characters made visible, pure), ``resume`` (stream offsets and
what a reconnect missed, pure), ``stream`` (a console's WebSocket with offsets, resume and notices),
``terminal`` (raw mode, SIGWINCH, restoring the terminal), ``connect`` (the interactive session),
``commands`` (the other sub-commands) and ``completion`` (the bash completion script).
"""
