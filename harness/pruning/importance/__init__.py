"""Importance criteria: scores that say which blocks (depth) or heads and channels (width) to cut.

`registry` holds the criteria of both kinds; `depth` and `width` register the built-in ones;
`sequential` and `grads` are the memory-bounded calibration passes they are written with.
"""
