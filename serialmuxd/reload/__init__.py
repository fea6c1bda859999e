"""Hot reload: ``plan`` (what changed, pure), ``runner`` (applying it on SIGHUP), ``tlsrotate``."""
