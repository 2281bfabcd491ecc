"""The PKI, the fleet registry and the factory enrolment step (``mbus-provision``)."""
