// bundle-validate checks an OLM bundle directory with operator-framework/api's validators: the
// default bundle validators plus the optional `operatorframework` suite that `operator-sdk bundle
// validate --select-optional suite=operatorframework` runs (operator-sdk itself is not installable
// from the Go proxy here; this is the library it calls). It prints every result and exits 1 when any
// validator reports an error, so the e2e test fails on errors and shows warnings.
//
// Usage: bundle-validate BUNDLE_DIR [K8S_VERSION]
package main

import (
	"fmt"
	"os"

	"github.com/operator-framework/api/pkg/manifests"
	"github.com/operator-framework/api/pkg/validation"
	"github.com/operator-framework/api/pkg/validation/errors"
)

func main() {
	if len(os.Args) < 2 || len(os.Args) > 3 {
		fmt.Fprintln(os.Stderr, "usage: bundle-validate BUNDLE_DIR [K8S_VERSION]")
		os.Exit(2)
	}
	k8sVersion := "1.34"
	if len(os.Args) == 3 {
		k8sVersion = os.Args[2]
	}
	bundle, err := manifests.GetBundleFromDir(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "ERROR loading bundle %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	validators := validation.DefaultBundleValidators.WithValidators(
		validation.OperatorHubV2Validator,
		validation.StandardCapabilitiesValidator,
		validation.StandardCategoriesValidator,
		validation.AlphaDeprecatedAPIsValidator,
		validation.GoodPracticesValidator,
	)
	objs := append(bundle.ObjectsToValidate(), map[string]string{"k8s-version": k8sVersion})
	failed := false
	for _, result := range validators.Validate(objs...) {
		for _, e := range result.Errors {
			if e.Level == errors.LevelError {
				failed = true
				fmt.Printf("ERROR %s: %s\n", result.Name, e.Error())
			} else {
				fmt.Printf("WARN %s: %s\n", result.Name, e.Error())
			}
		}
		for _, w := range result.Warnings {
			fmt.Printf("WARN %s: %s\n", result.Name, w.Error())
		}
	}
	if failed {
		os.Exit(1)
	}
	fmt.Printf("bundle %s (%s): valid (default + operatorframework validators, k8s %s)\n",
		os.Args[1], bundle.CSV.GetName(), k8sVersion)
}
