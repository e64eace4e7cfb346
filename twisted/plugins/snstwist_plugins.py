"""twistd plugins of snstwist: sns-router, sns-server, sns-cluster, sns-web."""

from twisted.application.service import ServiceMaker

snsRouter = ServiceMaker(
    "snstwist router", "snstwist.commands.tap.router",
    "Router of an snstwist cluster: tells clients where live masters are.",
    "sns-router")

snsServer = ServiceMaker(
    "snstwist server", "snstwist.commands.tap.server",
    "Server of one snstwist VM (a master, which spawns its slave).",
    "sns-server")

snsCluster = ServiceMaker(
    "snstwist local cluster", "snstwist.commands.tap.cluster",
    "A router and N VMs on loopback, in one command.",
    "sns-cluster")

snsWeb = ServiceMaker(
    "snstwist web", "snstwist.commands.tap.web",
    "The web timeline and the live cluster dashboard, a client of the cluster.",
    "sns-web")
