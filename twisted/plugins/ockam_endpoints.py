from ockamtw.endpoint_parsers import OckamClientParser, OckamServerParser

ockamClient = OckamClientParser()
ockamServer = OckamServerParser()
