{{/* Chart name. */}}
{{- define "dspark-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "dspark-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dspark-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels (immutable once installed). */}}
{{- define "dspark-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dspark-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Standard labels of every object of the release. */}}
{{- define "dspark-operator.labels" -}}
helm.sh/chart: {{ include "dspark-operator.chart" . }}
{{ include "dspark-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dspark
{{- end -}}

{{- define "dspark-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dspark-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dspark-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Namespaces the operator watches in namespace scope (default: the release namespace). */}}
{{- define "dspark-operator.watchNamespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- join "," .Values.watchNamespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* Cross-field checks a JSON schema cannot express with a clear message. */}}
{{- define "dspark-operator.validate" -}}
{{- if and (eq .Values.rbac.scope "cluster") .Values.watchNamespaces -}}
{{- fail "watchNamespaces is only used with rbac.scope=namespace; set rbac.scope=namespace or leave watchNamespaces empty" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled=true (the ServiceMonitor scrapes the metrics Service)" -}}
{{- end -}}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.operator.livenessPort)) -}}
{{- fail (printf "metrics.port and operator.livenessPort must differ (both are %d)" (int .Values.metrics.port)) -}}
{{- end -}}
{{- end -}}

{{/* The namespaced rules of the operator (in a ClusterRole for cluster scope, a Role per namespace otherwise). */}}
{{- define "dspark-operator.namespacedRules" -}}
# Its own custom resource: watch it, keep Kopf's annotations and finalizer on it, write its status,
# delete it runPolicy.ttlSecondsAfterFinished after it finished.
- apiGroups: ["dspark.io"]
  resources: ["dsparktrainingjobs"]
  verbs: ["get", "list", "watch", "patch", "update", "delete"]
- apiGroups: ["dspark.io"]
  resources: ["dsparktrainingjobs/status"]
  verbs: ["get", "patch", "update"]
# Owner references with blockOwnerDeletion on the children need update on the owner's finalizers.
- apiGroups: ["dspark.io"]
  resources: ["dsparktrainingjobs/finalizers"]
  verbs: ["update"]
# Children of a job: Mooncake master and SGLang (Deployments), trainer gang (StatefulSet).
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Scale-down on completion and suspend goes through the scale subresource.
- apiGroups: ["apps"]
  resources: ["deployments/scale", "statefulsets/scale"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["services", "configmaps", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# The trainer's Role/RoleBinding. The operator holds every permission it grants there (get on
# dsparktrainingjobs, get/patch on dsparktrainingjobs/status), so it needs no escalate or bind.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Trainer pods: watched for failures, deleted for a gang restart. Never created directly.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
# Events on jobs (Kopf and the reconciler); listed to tell why a trainer StatefulSet creates no pods.
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch", "list"]
# The claims a job names, looked up when its pods cannot start (Schedulable=False names the missing one).
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
{{- if .Values.rbac.batchJobs }}
# Data regeneration (responses by the target model) runs as a batch Job.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- end }}
{{- if .Values.rbac.kueue }}
# Gang admission: one Kueue Workload per queued job; its status is written to give quota back after an eviction
# and to mark it Finished; the job's LocalQueue is read to name its ClusterQueue.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads/status"]
  verbs: ["get", "update", "patch"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["localqueues"]
  verbs: ["get"]
{{- end }}
{{- if .Values.rbac.podMonitors }}
# Optional PodMonitor per job (Prometheus Operator).
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- end }}
{{- end -}}
