from twisted.application.service import ServiceMaker

orchestrator = ServiceMaker(
    "ockamtw-orchestrator", "ockamtw.orchestrator.tap", "A self-hosted Ockam Orchestrator (ockamtw)", "ockam-orchestrator"
)
