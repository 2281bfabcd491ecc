"""The organization's OPC UA server that receives readings (``mbus-receiver``)."""
