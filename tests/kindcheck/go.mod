module kubetune.test/kindcheck

go 1.25

require (
	sigs.k8s.io/kind v0.30.0
	sigs.k8s.io/yaml v1.4.0
)

require github.com/pkg/errors v0.9.1 // indirect
