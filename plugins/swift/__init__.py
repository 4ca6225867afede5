"""BlockStore on OpenStack Swift (python-swiftclient; Keystone v3 or tempauth)."""
