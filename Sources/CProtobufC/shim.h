// shim.h: exposes the system protobuf-c runtime to Swift.
#include <protobuf-c/protobuf-c.h>
