#!/usr/bin/env bash
# The main job: a local demo on the bundled default model. Not built yet.
echo "make demo: not built yet — needs the inference engine (issue 3) and the server (issue 4)." >&2
exit 1
