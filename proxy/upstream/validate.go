package upstream

import (
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
)

// Check validates clusters and load assignments with the checks Update runs,
// and installs nothing: the xDS client refuses a bad cluster or assignment in
// the response that carried it, even while a cluster waits for its endpoints.
// An EDS cluster without an assignment is valid (it is warming); an
// assignment is checked against every cluster it feeds, or on its own when no
// cluster takes it. Errors name the cluster or assignment and the field.
func Check(clusters []*clusterv3.Cluster, assignments []*endpointv3.ClusterLoadAssignment) error {
	byName := make(map[string]*endpointv3.ClusterLoadAssignment, len(assignments))
	for i, a := range assignments {
		name := a.GetClusterName()
		switch {
		case a == nil:
			return fmt.Errorf("assignments[%d]: nil", i)
		case name == "":
			return fmt.Errorf("assignments[%d]: cluster_name: empty", i)
		case byName[name] != nil:
			return fmt.Errorf("assignment %q: cluster_name: given twice", name)
		}
		byName[name] = a
	}
	var m Manager // parseCluster reads none of the Manager's state
	seen := make(map[string]bool, len(clusters))
	used := map[string]bool{}
	for i, c := range clusters {
		name := c.GetName()
		switch {
		case c == nil:
			return fmt.Errorf("clusters[%d]: nil", i)
		case name == "":
			return fmt.Errorf("clusters[%d]: name: empty", i)
		case seen[name]:
			return fmt.Errorf("cluster %q: name: given twice", name)
		}
		seen[name] = true
		cc, err := m.parseCluster(c)
		if err != nil {
			return fmt.Errorf("cluster %q: %w", name, err)
		}
		switch cc.discovery {
		case clusterv3.Cluster_EDS:
			if a := byName[cc.edsName]; a != nil {
				used[cc.edsName] = true
				if _, err := parseEndpoints(cc, a); err != nil {
					return fmt.Errorf("cluster %q: assignment %q: %w", name, cc.edsName, err)
				}
			}
		case clusterv3.Cluster_ORIGINAL_DST:
		default:
			if _, err := parseEndpoints(cc, c.GetLoadAssignment()); err != nil {
				return fmt.Errorf("cluster %q: load_assignment.%w", name, err)
			}
		}
	}
	for name, a := range byName {
		if !used[name] {
			if err := a.Validate(); err != nil {
				return fmt.Errorf("assignment %q: %w", name, err)
			}
		}
	}
	return nil
}
