"""``python tests/support/pretrain_tiny.py ARGS``: pretrain_clip with the tiny test architectures registered,
for tests that kill and resume it in a subprocess (run as a script, so clip_tiny is found beside it)."""
import sys

from clip_tiny import register

from sportsnet.apps import pretrain_clip

if __name__ == "__main__":
    register()
    pretrain_clip.main(sys.argv[1:])
