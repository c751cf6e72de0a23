"""
The C{relayd} twistd/twist plugin: C{twistd -n relayd --config PATH}.
"""

from twisted.application.service import ServiceMaker

relayd = ServiceMaker(
    "relayd",
    "relayd.tap",
    "SMTP relay that hands each message to an email provider's HTTP API",
    "relayd",
)
