"""Generated protocol modules (see foveal.proto.generate); do not edit."""
