from twisted.application.service import ServiceMaker

ockam = ServiceMaker("ockamtw", "ockamtw.tap", "An Ockam node (ockamtw): routing, relays, portals", "ockam")
