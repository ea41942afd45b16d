{{/*
Optional APIs: the custom resources of operators the chart may render. Helm fills
.Capabilities.APIVersions from the cluster (install, upgrade) or from `--api-versions` (template);
`extraApiVersions` adds to it for renders that cannot pass the flag (`helm lint`).

Two rules (docs/deploy.md, "Optional APIs"):
- Monitoring, on by default (ServiceMonitor, PrometheusRule, CloudNativePG's PodMonitor): left out
  when the cluster does not serve its API; NOTES.txt says so.
- A feature the values ask for explicitly (operators, mesh, TLS, KEDA, Gateway API routes): the
  render fails, naming every missing operator at once (not only the first one met).
*/}}

{{/* Whether the cluster serves an API, as "true" or "": (dict "root" $ "api" "group/version/Kind"). */}}
{{- define "mercato.api.served" -}}
{{- if or (.root.Capabilities.APIVersions.Has .api) (has .api .root.Values.extraApiVersions) -}}
true
{{- end -}}
{{- end -}}

{{/* What the values ask for that needs an operator's API, as JSON
[{feature, operator, apis: [group/version/Kind]}]. */}}
{{- define "mercato.api.requested" -}}
{{- $v := .Values -}}
{{- $enabled := include "mercato.enabledComponents" . | fromJsonArray -}}
{{- $needs := list -}}
{{- if $v.cnpg.enabled -}}
{{- $needs = append $needs (dict "feature" "cnpg.enabled" "operator" "CloudNativePG" "apis" (list "postgresql.cnpg.io/v1/Cluster")) -}}
{{- end -}}
{{- if $v.kafka.strimzi.enabled -}}
{{- $apis := list "kafka.strimzi.io/v1/Kafka" "kafka.strimzi.io/v1/KafkaNodePool" -}}
{{- if $v.kafka.topics.create -}}
{{- $apis = append $apis "kafka.strimzi.io/v1/KafkaTopic" -}}
{{- end -}}
{{- $needs = append $needs (dict "feature" "kafka.strimzi.enabled" "operator" "Strimzi (>= 1.0)" "apis" $apis) -}}
{{- else if and $v.kafka.topics.create $v.kafka.topics.strimziCluster -}}
{{- $needs = append $needs (dict "feature" "kafka.topics.strimziCluster" "operator" "Strimzi (>= 1.0)" "apis" (list "kafka.strimzi.io/v1/KafkaTopic")) -}}
{{- end -}}
{{- if $v.mongodb.operator.enabled -}}
{{- $needs = append $needs (dict "feature" "mongodb.operator.enabled" "operator" "MongoDB Controllers for Kubernetes (MongoDBCommunity)" "apis" (list "mongodbcommunity.mongodb.com/v1/MongoDBCommunity")) -}}
{{- end -}}
{{- if and $v.keda.enabled (has "analytics" $enabled) -}}
{{- $needs = append $needs (dict "feature" "keda.enabled" "operator" "KEDA" "apis" (list "keda.sh/v1alpha1/ScaledObject")) -}}
{{- end -}}
{{- if eq $v.mesh.provider "istio" -}}
{{- $needs = append $needs (dict "feature" "mesh.provider=istio" "operator" "Istio (>= 1.22)" "apis" (list "security.istio.io/v1/PeerAuthentication" "security.istio.io/v1/AuthorizationPolicy" "networking.istio.io/v1/DestinationRule" "networking.istio.io/v1/VirtualService")) -}}
{{- else if eq $v.mesh.provider "linkerd" -}}
{{- $needs = append $needs (dict "feature" "mesh.provider=linkerd" "operator" "Linkerd (>= 2.16)" "apis" (list "policy.linkerd.io/v1beta3/Server" "policy.linkerd.io/v1beta3/HTTPRoute" "policy.linkerd.io/v1alpha1/AuthorizationPolicy" "policy.linkerd.io/v1alpha1/MeshTLSAuthentication" "policy.linkerd.io/v1alpha1/NetworkAuthentication")) -}}
{{- $needs = append $needs (dict "feature" "mesh.provider=linkerd (GRPCRoutes)" "operator" "Gateway API CRDs" "apis" (list "gateway.networking.k8s.io/v1/GRPCRoute")) -}}
{{- end -}}
{{- if $v.tls.enabled -}}
{{- $needs = append $needs (dict "feature" "tls.enabled" "operator" "cert-manager" "apis" (list "cert-manager.io/v1/Certificate" "cert-manager.io/v1/Issuer")) -}}
{{- end -}}
{{- if and (has "gateway" $enabled) $v.ingress.enabled $v.ingress.tls.enabled $v.certManager.issuerRef.name -}}
{{- $needs = append $needs (dict "feature" "certManager.issuerRef (Ingress certificate)" "operator" "cert-manager" "apis" (list "cert-manager.io/v1/Certificate")) -}}
{{- end -}}
{{- if and (has "gateway" $enabled) $v.httpRoute.enabled -}}
{{- $needs = append $needs (dict "feature" "httpRoute.enabled" "operator" "Gateway API CRDs" "apis" (list "gateway.networking.k8s.io/v1/HTTPRoute")) -}}
{{- end -}}
{{- toJson $needs -}}
{{- end -}}

{{/* The features the values ask for whose operator's API the cluster does not serve, one line
each (JSON list). */}}
{{- define "mercato.api.missing" -}}
{{- $root := . -}}
{{- $missing := list -}}
{{- range include "mercato.api.requested" . | fromJsonArray -}}
{{- $absent := list -}}
{{- range .apis -}}
{{- if not (include "mercato.api.served" (dict "root" $root "api" .)) -}}
{{- $absent = append $absent . -}}
{{- end -}}
{{- end -}}
{{- if $absent -}}
{{- $missing = append $missing (printf "%s needs %s: the cluster does not serve %s" .feature .operator (join ", " $absent)) -}}
{{- end -}}
{{- end -}}
{{- toJson $missing -}}
{{- end -}}

{{/* Monitoring resources, on by default, rendered only where their API is served: "true" or "". */}}
{{- define "mercato.serviceMonitor.enabled" -}}
{{- if and .Values.serviceMonitor.enabled (include "mercato.api.served" (dict "root" . "api" "monitoring.coreos.com/v1/ServiceMonitor")) -}}
true
{{- end -}}
{{- end -}}

{{- define "mercato.prometheusRule.enabled" -}}
{{- if and .Values.prometheusRule.enabled (include "mercato.api.served" (dict "root" . "api" "monitoring.coreos.com/v1/PrometheusRule")) -}}
true
{{- end -}}
{{- end -}}

{{- define "mercato.podMonitor.enabled" -}}
{{- if and .Values.serviceMonitor.enabled (include "mercato.api.served" (dict "root" . "api" "monitoring.coreos.com/v1/PodMonitor")) -}}
true
{{- end -}}
{{- end -}}
