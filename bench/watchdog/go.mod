module skyfri.dev/bench/watchdog

go 1.19
