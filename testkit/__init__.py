"""What tests/ and loadtests/ share, so that neither imports the other: the
real service started as a process (service.py), a private MariaDB (mariadb.py),
a write load with its oracle (load.py) and the crash drill (drill.py).
Nothing here is part of the service."""
