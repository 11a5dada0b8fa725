#!/bin/sh
# Runs once per call: the request body arrives on stdin, what is written to stdout is the
# answer. The request's method, path and headers are in $Http_Method, $Http_Path and
# $Http_<Header_Name>. Any command works: change `fprocess` in stack.yml to run another.
body=$(cat)
echo "Hello from {{name}} (${Http_Method:-POST}): ${body:-nothing received}"
