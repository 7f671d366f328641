package mc

import (
	backendiface "github.com/RichardKnop/machinery/v2/backends/iface"
	mongobackend "github.com/RichardKnop/machinery/v2/backends/mongo"
	"github.com/RichardKnop/machinery/v2/config"
)

// newV2MongoBackend is Machinery v2's MongoDB backend for a mongodb:// or
// mongodb+srv:// result backend URL. cnf.MongoDB stays nil, so Machinery
// uses its default database "machinery" (the Python side's default too) and
// dials cnf.ResultBackend itself, lazily, on the first state write or read.
// v1 needs nothing here: its BackendFactory picks the same backend for these
// URLs.
func newV2MongoBackend(cnf *config.Config) backendiface.Backend {
	be, _ := mongobackend.New(cnf) // never fails: it connects on first use
	return be
}
