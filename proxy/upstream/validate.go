package upstream

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
)

// Check validates clusters and load assignments with the checks Update runs
// (the same parse), and installs nothing: the xDS client refuses a bad
// cluster or assignment in the response that carried it, even while a
// cluster waits for its endpoints. An EDS cluster without an assignment is
// valid (it is warming); an assignment is checked against every cluster it
// feeds, or on its own when no cluster takes it. Errors name the cluster or
// assignment and the field.
func Check(clusters []*clusterv3.Cluster, assignments []*endpointv3.ClusterLoadAssignment) error {
	var m Manager // parse reads none of a Manager's state
	_, err := m.parse(clusters, assignments)
	return err
}
