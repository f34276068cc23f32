"""The descriptor pool that holds foveal's protocol descriptors.

protobuf's default pool refuses a second definition of a message name from a different file,
and tritonclient (or grpcio-health-checking) registers its own copy of `inference.*`
(`grpc.health.v1.*`) there. A private pool lets both copies live in one process; the wire
format is the same, so messages from either copy interoperate.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
