"""Who is asking: the credentials serialmuxd checks before anything on a console is reachable.

Local passwords (argon2id hashes, verified in a worker thread with bounded concurrency), API tokens (stored
only as SHA-256 digests and compared in constant time), and the other identity sources (the users file,
TLS client certificates, OIDC bearer tokens) each live in their own module here; the pure policy that slows
down guessing (``core/throttle.py``) and decides what an identity may do (``core/access.py``) does not.
"""
