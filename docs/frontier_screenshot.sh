#!/bin/sh
# Screenshot of the interactive frontier with one point's hover text shown: docs/img/frontier-html.png.
# Needs Debian's chromium (apt-get install -y chromium).  Usage: sh docs/frontier_screenshot.sh [RUN [LINE [POINT]]]
set -eu
run=${1:-frontier-gpu}; line=${2:-teal-block}; point=${3:-1}
html=docs/results/$run/plots/frontier.html
# the trace index of LINE: traces are named "<label> · <line>"
curve=$(grep -o '"name":"[^"]*"' "$html" | grep -n " \\\\u00b7 $line\"" | cut -d: -f1)
tmp=$(mktemp -d)
sed "s#</body>#<script>window.addEventListener('load',function(){Plotly.Fx.hover(document.querySelector('.plotly-graph-div'),[{curveNumber:$((curve - 1)),pointNumber:$point}]);});</script></body>#" \
  "$html" > "$tmp/frontier.html"
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --no-first-run \
  --window-size=1400,900 --virtual-time-budget=5000 --screenshot=docs/img/frontier-html.png "file://$tmp/frontier.html"
rm -r "$tmp"
